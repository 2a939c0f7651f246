// Operator schemas of the robustagg namespace. Kernels are registered per
// device in cpu/*.cpp and cuda/*.cu; fakes for tracing live in robustagg/ops.py.
#include <Python.h>
#include <torch/library.h>

#include "cpu/isa.h"

// Importing robustagg._C loads this library, whose static initialisers
// register the operators; the module itself is empty.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(robustagg, m) {
  // Coordinate-wise rules (SPEC 2): X is (n, d), the result is (d,).
  m.def("mean(Tensor X, Tensor? weights=None) -> Tensor");
  m.def("coordinate_median(Tensor X) -> Tensor");
  m.def("trimmed_mean(Tensor X, int f) -> Tensor");
  m.def("meamed(Tensor X, int f) -> Tensor");
  // Which CPU instruction set the selection kernels run with on this machine.
  m.def("cpu_kernel_isa() -> str", [] { return std::string(robustagg::cpu::isa_name(robustagg::cpu::active_isa())); });
}
