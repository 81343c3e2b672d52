"""Reasoning trees: Tree-of-Thoughts search (BFS/beam, DFS) over task plugins.

Search knows nothing about models: every expansion is sent as group requests through a
:class:`seedq.decoding.types.GroupGenerator`. Entry points: :func:`parse_job` and
:func:`run_tree`.
"""

from seedq.reasoning.errors import JobSpecError, ReasoningError
from seedq.reasoning.jobs import JobSpec, parse_job
from seedq.reasoning.params import SearchParams
from seedq.reasoning.runner import TreeResult, run_tree
from seedq.reasoning.tasks import TASK_NAMES
from seedq.reasoning.tree import Node, Tree

__all__ = [
    "TASK_NAMES",
    "JobSpec",
    "JobSpecError",
    "Node",
    "ReasoningError",
    "SearchParams",
    "Tree",
    "TreeResult",
    "parse_job",
    "run_tree",
]
