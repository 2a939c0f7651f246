"""``robustagg bench`` and the pytest-benchmark suite in ``bench/``: robustagg's ops timed against one read
of the input, the plain-PyTorch way and byzfl. :mod:`.cases` holds the table of benchmark cases (one
entry per op) over :mod:`.params`, :mod:`.baselines` (the torch ways) and :mod:`.byzfl_peer`;
:mod:`.calibration` finds byzfl's geometric-median T; :mod:`.timing` times, :mod:`.memory` measures peak
extra memory (CUDA, and a CPU child process), :mod:`.host` probes the machine; :mod:`.suite` runs a grid
of cases into the JSON document that :mod:`.report` prints as a table or markdown; :mod:`.command` is the
subcommand. Nothing is imported here, so that the command-line parser stays light.
"""
