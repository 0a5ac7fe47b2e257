"""The course tooling: the lab's one source turned into exercise and solution notebooks, executed with
stable outputs, graded with nbgrader and released with a wheel. It needs no ML code (it sits just
above the foundations), so instructors' tools never import torch models.

Modules, lowest first: `notebooks` (build and check), `regenerate` (execute with CPU-stable outputs),
`grading` (the nbgrader version), `release` (a course folder in one command).
"""
