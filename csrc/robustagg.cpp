// Operator schemas of the robustagg namespace. Kernels are registered per
// device in cpu/*.cpp and cuda/*.cu; fakes for tracing live in robustagg/ops.py.
#include <Python.h>
#include <torch/library.h>

#include "cpu/isa.h"
#include "kernel_constants.h"

// Importing robustagg._C loads this library, whose static initialisers
// register the operators; the module holds only the kernels' sizes
// (kernel_constants.h), for tests that aim at their boundaries.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  const struct {
    const char* name;
    long value;
  } constants[] = {
      // CPU selection rules: above this n, a run-time sorting network instead of one in registers.
      {"COORDINATE_CPU_MAX_FIXED_ROWS", robustagg::kCpuMaxFixedRows},
      // CPU coordinate-wise rules: columns per parallel task.
      {"COORDINATE_CPU_COLUMNS_PER_TASK", robustagg::kCpuColumnsPerTask},
      // CUDA selection rules: above this n a column is sorted in shared memory, not in registers
      // (float32 and the half types, then float64).
      {"COORDINATE_CUDA_MAX_REGISTER_ROWS", robustagg::kCudaMaxRegisterRows},
      {"COORDINATE_CUDA_MAX_REGISTER_ROWS_FLOAT64", robustagg::kCudaMaxRegisterRows64},
      // CUDA selection rules: the largest n (float32 and the half types, then float64).
      {"COORDINATE_CUDA_MAX_ROWS", robustagg::cuda_max_tile_rows(4)},
      {"COORDINATE_CUDA_MAX_ROWS_FLOAT64", robustagg::cuda_max_tile_rows(8)},
      // CPU fused updates: elements per parallel piece.
      {"FUSED_CPU_PIECE", robustagg::kFusedCpuPiece},
      // CPU weighted_step_ and masked_sgd_step_: elements per block of a piece.
      {"FUSED_CPU_BLOCK", robustagg::kFusedCpuBlock},
      // CUDA multi-tensor launches: elements per block, blocks and tensors per launch.
      {"FUSED_CUDA_CHUNK", robustagg::kFusedCudaChunk},
      {"FUSED_CUDA_MAX_BLOCKS", robustagg::kFusedCudaMaxBlocks},
      {"FUSED_CUDA_MAX_TENSORS", robustagg::kFusedCudaMaxTensors},
      // CUDA weighted_step_: elements per block.
      {"FUSED_CUDA_TABLE_CHUNK", robustagg::kFusedCudaTableChunk},
  };
  for (const auto& c : constants) {
    if (PyModule_AddIntConstant(module, c.name, c.value) < 0) {
      Py_DECREF(module);
      return nullptr;
    }
  }
  return module;
}

TORCH_LIBRARY(robustagg, m) {
  // Coordinate-wise rules (SPEC 2): X is (n, d), the result is (d,).
  m.def("mean(Tensor X, Tensor? weights=None) -> Tensor");
  m.def("coordinate_median(Tensor X) -> Tensor");
  m.def("trimmed_mean(Tensor X, int f) -> Tensor");
  m.def("meamed(Tensor X, int f) -> Tensor");
  // Per coordinate, the mean of the `keep` values closest to the median:
  // meamed(X, f) is mean_around_median(X, n - f); Bulyan's last stage needs keep < n / 2.
  m.def("mean_around_median(Tensor X, int keep) -> Tensor");
  // Distance rules (SPEC 3) see X only through these two passes.
  // (m, m) float64 squared distances between the rows of X and, when given,
  // center as row n (m = n + 1); +inf to and from rows that are not finite;
  // and an (m,) bool tensor saying which rows are finite.
  m.def("pairwise_sq_distances(Tensor X, Tensor? center=None) -> (Tensor, Tensor)");
  // out[r] = sum_i C[r, i] * row_i for the rows of X and, when given, center
  // as row n; C is (k, m) float64, out is (k, d) in X's dtype. Rows whose
  // coefficient is 0 are not read.
  m.def("mix_rows(Tensor C, Tensor X, Tensor? center=None) -> Tensor");
  // (n,) float64 squared Euclidean norms of the rows (clip, ARC).
  m.def("row_sq_norms(Tensor X) -> Tensor");
  // (2, n) float64: row 0 the squared norms of the rows, row 1 their dot
  // products with the (d,) vector v of X's dtype (FLTrust's root), in one pass.
  m.def("row_sq_norms_and_dots(Tensor X, Tensor v) -> Tensor");
  // (n,) float64 squared distances ||x_i - v||^2 of the rows to the (d,)
  // vector v of X's dtype, summed directly (MoNNA's distances to its pivot).
  m.def("row_sq_distances(Tensor X, Tensor v) -> Tensor");
  // CAF's filter (SPEC 3) on the host: from the (n, n) float64 squared
  // distances and the (n,) finite flags, the (n,) float64 row weights c of the
  // round with the smallest top eigenvalue, normalised to sum 1 (all 0 when
  // no row is finite). CPU tensors only.
  m.def("caf_weights(Tensor D, Tensor finite, int f) -> Tensor");
  // Fused multi-tensor updates (SPEC 6), in place on the first list.
  // buffers[i] <- beta * buffers[i] + (1 - beta) * grads[i]: worker momentum
  // and the SGD-with-momentum statistic.
  m.def("momentum_update_(Tensor(a!)[] buffers, Tensor[] grads, float beta) -> ()");
  // Client step of the federated algorithms, params written only:
  // params <- params - lr * (((coef_grad * grads + coef_anchor * anchor_grads)
  //                           + coef_control * control) + coef_momentum * momentum);
  // absent lists are not read. Covers SGD / SGD with momentum / MVR client
  // steps of Mime and MimeLite, FedAvg and SCAFFOLD.
  m.def(
      "client_step_(Tensor(a!)[] params, Tensor[] grads, Tensor[]? anchor_grads, Tensor[]? control, "
      "Tensor[]? momentum, float lr, float coef_grad, float coef_anchor, float coef_control, "
      "float coef_momentum) -> ()");
  // Mime client step with base Adam: the Adam step from the frozen state
  // (exp_avg, exp_avg_sq, step - 1 steps taken) with gradient
  // (grads - anchor_grads) + control; params written only.
  m.def(
      "adam_client_step_(Tensor(a!)[] params, Tensor[] grads, Tensor[]? anchor_grads, Tensor[]? control, "
      "Tensor[] exp_avg, Tensor[] exp_avg_sq, float lr, float beta1, float beta2, float eps, int step) -> ()");
  // Adam's statistics: exp_avg <- b1 exp_avg + (1 - b1) g; exp_avg_sq <- b2 exp_avg_sq + (1 - b2) g^2.
  m.def(
      "adam_stats_update_(Tensor(a!)[] exp_avg, Tensor(b!)[] exp_avg_sq, Tensor[] grads, float beta1, "
      "float beta2) -> ()");
  // Momentum-based variance reduction: m <- a g + (1 - a) ((m + g) - prev_grads).
  m.def("mvr_update_(Tensor(a!)[] momentum, Tensor[] grads, Tensor[] prev_grads, float a) -> ()");
  // Weighted gradient averaging for user 0 with N collaborators, optionally
  // bias-corrected (SPEC 6.3). grads: the N + 1 users' lists one after the
  // other; corrections: the N collaborators' lists; weights: N + 1 numbers.
  // u = a_0 g_0, then u = (u + a_i g_i) + c_i for i = 1..N; params -= lr * u;
  // then c_i <- (1 - beta) c_i + beta * a_i (g_0 - g_i).
  m.def(
      "weighted_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[]? corrections, float[] weights, "
      "float lr, float beta) -> ()");
  // SGD with momentum where the mask is set (SPEC 6.4), in place on params and
  // momentum_buffers: d = grads (+ weight_decay * params), m <- momentum * m + d,
  // params -= lr * m. Masks: bool like params, or uint8 packed bits; absent: all set.
  m.def(
      "masked_sgd_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, Tensor[]? masks, "
      "float lr, float momentum, float weight_decay) -> ()");
  // Which CPU instruction set the selection kernels run with on this machine.
  m.def("cpu_kernel_isa() -> str", [] { return std::string(robustagg::cpu::isa_name(robustagg::cpu::active_isa())); });
}
