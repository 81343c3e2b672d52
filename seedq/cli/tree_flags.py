"""Tree flags, one set for ``seedq solve``, ``seedq submit`` and ``seedq run``: ``--task`` (a
choice, checked once: a typo is one error, not one per line), ``--limit`` and one flag per
:class:`~seedq.reasoning.params.SearchParams` field (``--breadth`` ... ``--seed``), each the
default of every line of the file (a line's own ``search`` object overrides it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar

import click

from seedq.reasoning.errors import JobSpecError
from seedq.reasoning.params import EVALUATORS, GENERATORS, SEARCHES, SearchParams
from seedq.reasoning.tasks import TASK_NAMES

F = TypeVar("F", bound=Callable[..., Any])

SEARCH_FIELDS: dict[str, Any] = {f.name: f.default for f in fields(SearchParams)}
_HELP = {
    "search": "bfs (keep the best per depth) or dfs (best child first)",
    "breadth": "thoughts per expanded node",
    "depth": "steps of the tree",
    "beam": "states kept per depth (bfs)",
    "generator": "sample (N samples) or propose (one prompt proposing N)",
    "evaluator": "value (score each state) or vote (vote among states)",
    "vote_samples": "votes per vote evaluation",
    "value_samples": "samples per value judgement (1 = greedy)",
    "value_threshold": "dfs: prune children scored below it",
    "node_budget": "dfs: stop after this many thought nodes",
    "temperature": "sampling temperature of thoughts and votes",
    "top_k": "top-k sampling (0 = off)",
    "top_p": "nucleus sampling (1 = off)",
    "max_new_tokens": "token budget of a thought or solution",
    "eval_max_new_tokens": "token budget of a judgement",
    "seed": "sampling seed (default: derived from each line's id)",
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "search": SEARCHES, "generator": GENERATORS, "evaluator": EVALUATORS,
}


def _type(name: str, default: Any) -> Any:
    if name in _CHOICES:
        return click.Choice(_CHOICES[name])
    return click.FLOAT if isinstance(default, float) else click.INT


def search_options(func: F) -> F:
    """One ``--<name>`` flag per SearchParams field, default None (unset)."""
    for name, default in reversed(list(SEARCH_FIELDS.items())):
        shown = "" if default is None else f" (built-in: {default})"
        func = click.option(
            "--" + name.replace("_", "-"), name, type=_type(name, default), default=None,
            help=f"{_HELP.get(name, name)}{shown}",
        )(func)
    return func


def tree_flags(func: F) -> F:
    """``--task``, ``--limit`` and :func:`search_options`."""
    func = search_options(func)
    func = click.option("--limit", type=click.IntRange(min=1), default=None,
                        help="first K lines only")(func)
    return click.option("--task", type=click.Choice(TASK_NAMES), default=None,
                        help="task of lines without a 'task' field")(func)


def take_search(options: dict[str, Any]) -> dict[str, Any]:
    """Pop the search flags from ``options``: the given ones, checked together once (a bad
    value is one click error naming its flag, not one per line)."""
    given = {name: options.pop(name, None) for name in SEARCH_FIELDS}
    given = {name: value for name, value in given.items() if value is not None}
    try:
        SearchParams().updated(given)
    except JobSpecError as exc:
        flag = "--" + exc.field.removeprefix("search.").replace("_", "-")
        raise click.BadParameter(exc.reason, param_hint=flag) from exc
    return given


def search_defaults(options: dict[str, Any]) -> SearchParams | None:
    """Pop the search flags: the given ones as SearchParams (None when none is given)."""
    given = take_search(options)
    return SearchParams().updated(given) if given else None
