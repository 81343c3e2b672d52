"""A Blocksworld simulator: the 4 STRIPS actions of ``domain.pddl`` (pick-up, put-down,
stack, unstack), with parsers and renderers for the natural language of the RAP /
llm-reasoners prompts and for PDDL atoms and actions.

Blocks are named by their colour ("red"); PDDL objects a..l map to the colours below.
A state is a frozenset of atoms such as ``("on", "red", "blue")`` or ``("handempty",)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

COLOURS = ("red", "blue", "orange", "yellow", "white", "magenta", "black", "cyan", "green",
           "violet", "silver", "gold")
LETTERS = "abcdefghijkl"
_BY_LETTER = dict(zip(LETTERS, COLOURS, strict=True))
_LETTER_OF = {colour: letter for letter, colour in _BY_LETTER.items()}

Atom = tuple[str, ...]
State = frozenset[Atom]
ACTIONS = {"pick-up": 1, "put-down": 1, "stack": 2, "unstack": 2}


class BlocksworldError(ValueError):
    """Text that is not a Blocksworld state, goal or action."""


class IllegalAction(ValueError):
    """An action whose preconditions do not hold; the message says which."""


@dataclass(frozen=True)
class Action:
    name: str  # pick-up | put-down | stack | unstack
    args: tuple[str, ...]  # block colours

    def to_nl(self) -> str:
        x = self.args[0]
        if self.name == "pick-up":
            return f"pick up the {x} block"
        if self.name == "put-down":
            return f"put down the {x} block"
        if self.name == "stack":
            return f"stack the {x} block on top of the {self.args[1]} block"
        return f"unstack the {x} block from on top of the {self.args[1]} block"

    def to_pddl(self) -> str:
        return f"({self.name} {' '.join(_LETTER_OF.get(a, a) for a in self.args)})"


_CLAUSES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), predicate)
    for pattern, predicate in (
        (r"^the (\w+) block is clear$", "clear"),
        (r"^the hand is empty$", "handempty"),
        (r"^the (\w+) block is on top of the (\w+) block$", "on"),
        (r"^the (\w+) block is on the table$", "ontable"),
        (r"^the hand is (?:currently )?holding the (\w+) block$", "holding"),
        (r"^the (\w+) block is in the hand$", "holding"),
    )
)
_SPLIT = re.compile(r",\s*and\s+|,\s*|\s+and\s+")
_NL_ACTIONS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), name)
    for pattern, name in (
        (r"^pick up the (\w+) block$", "pick-up"),
        (r"^put down the (\w+) block$", "put-down"),
        (r"^stack the (\w+) block on top of the (\w+) block$", "stack"),
        (r"^unstack the (\w+) block from on top of the (\w+) block$", "unstack"),
    )
)
_PREAMBLE = re.compile(r"^(?:i have that|my goal is to have that|have that)\s*,?\s*", re.I)
_PDDL = re.compile(r"^\(\s*([\w-]+)((?:\s+\w+)*)\s*\)$")


def parse_state(text: str) -> State:
    """Atoms of an NL conjunction ("the red block is clear, ... and the hand is empty")."""
    body = text.strip().rstrip(".").strip()
    body = _PREAMBLE.sub("", body)
    if not body:
        raise BlocksworldError("empty state")
    atoms: set[Atom] = set()
    for clause in _SPLIT.split(body):
        atoms.add(_parse_clause(clause.strip().lower()))
    return frozenset(atoms)


def _parse_clause(clause: str) -> Atom:
    for pattern, predicate in _CLAUSES:
        match = pattern.match(clause)
        if match:
            return (predicate, *match.groups())
    raise BlocksworldError(f"not a Blocksworld fact: {clause!r}")


def parse_pddl_atoms(atoms: Iterable[str]) -> State:
    """Atoms written as PDDL, e.g. ``["(handempty)", "(on c b)"]``; objects a..l -> colours."""
    parsed: set[Atom] = set()
    for text in atoms:
        match = _PDDL.match(text.strip().lower())
        if not match:
            raise BlocksworldError(f"not a PDDL atom: {text!r}")
        parsed.add((match.group(1), *(_BY_LETTER.get(a, a) for a in match.group(2).split())))
    return frozenset(parsed)


def parse_action(text: str) -> Action:
    """An NL ("unstack the red block from on top of the blue block") or PDDL action."""
    cleaned = text.strip().lower().rstrip(".").strip()
    for pattern, name in _NL_ACTIONS:
        match = pattern.match(cleaned)
        if match:
            return Action(name, match.groups())
    match = _PDDL.match(cleaned)
    if match and match.group(1) in ACTIONS:
        args = match.group(2).split()
        arity = ACTIONS[match.group(1)]
        if len(args) != arity:
            raise BlocksworldError(f"{match.group(1)} takes {arity} block(s): {text!r}")
        return Action(match.group(1), tuple(_BY_LETTER.get(a, a) for a in args))
    raise BlocksworldError(f"not a Blocksworld action: {text!r}")


_ACTION_ANYWHERE = re.compile(
    r"\b(?:pick up the \w+ block|put down the \w+ block|unstack the \w+ block from on top of "
    r"the \w+ block|stack the \w+ block on top of the \w+ block)",
    re.I,
)


def find_action(text: str) -> Action | None:
    """The first NL action phrase anywhere in ``text`` (for chatty model output)."""
    match = _ACTION_ANYWHERE.search(text)
    return parse_action(match.group(0)) if match else None


def _sort_key(atom: Atom) -> str:
    return " ".join((atom[0], *(_LETTER_OF.get(a, a) for a in atom[1:])))


def _atom_text(atom: Atom) -> str:
    predicate, *args = atom
    if predicate == "clear":
        return f"the {args[0]} block is clear"
    if predicate == "handempty":
        return "the hand is empty"
    if predicate == "on":
        return f"the {args[0]} block is on top of the {args[1]} block"
    if predicate == "ontable":
        return f"the {args[0]} block is on the table"
    if predicate == "holding":
        return f"the hand is holding the {args[0]} block"
    raise BlocksworldError(f"unknown predicate {predicate!r}")


def render_state(state: Iterable[Atom]) -> str:
    """NL text as llm-reasoners renders it: atoms sorted by "predicate args" (PDDL letters),
    joined by ", " and the last one by " and "."""
    texts = [_atom_text(a) for a in sorted(state, key=_sort_key)]
    if len(texts) < 2:
        return "".join(texts)
    return ", ".join(texts[:-1]) + " and " + texts[-1]


def blocks_of(state: Iterable[Atom]) -> tuple[str, ...]:
    names = {arg for atom in state for arg in atom[1:]}
    return tuple(sorted(names, key=lambda b: _LETTER_OF.get(b, b)))


def _effects(action: Action) -> tuple[list[tuple[Atom, str]], set[Atom], set[Atom]]:
    """(preconditions with the reason each one fails, add list, delete list)."""
    x = action.args[0]
    hand = (("handempty",), "the hand is not empty")
    holding = (("holding", x), f"the hand is not holding the {x} block")
    if action.name == "pick-up":
        needs = [hand, (("clear", x), f"the {x} block is not clear"),
                 (("ontable", x), f"the {x} block is not on the table")]
        return needs, {("holding", x)}, {("clear", x), ("ontable", x), ("handempty",)}
    if action.name == "put-down":
        return [holding], {("clear", x), ("handempty",), ("ontable", x)}, {("holding", x)}
    y = action.args[1]
    if action.name == "stack":
        needs = [holding, (("clear", y), f"the {y} block is not clear")]
        return needs, {("handempty",), ("clear", x), ("on", x, y)}, {("clear", y), ("holding", x)}
    needs = [hand, (("on", x, y), f"the {x} block is not on top of the {y} block"),
             (("clear", x), f"the {x} block is not clear")]
    return needs, {("holding", x), ("clear", y)}, {("on", x, y), ("clear", x), ("handempty",)}


def apply(state: State, action: Action) -> State:
    """The state after ``action``; raises :class:`IllegalAction` naming the failed condition."""
    blocks = blocks_of(state)
    missing = [b for b in action.args if b not in blocks]
    if missing:
        raise IllegalAction(f"cannot {action.to_nl()}: there is no {missing[0]} block")
    needs, add, delete = _effects(action)
    for atom, reason in needs:
        if atom not in state:
            raise IllegalAction(f"cannot {action.to_nl()}: {reason}")
    return frozenset((state - delete) | add)


def satisfies(state: State, goal: State) -> bool:
    return goal <= state


def legal_actions(state: State) -> list[Action]:
    """Every applicable action, in a fixed order."""
    blocks = blocks_of(state)
    candidates = [Action("unstack", (x, y)) for x in blocks for y in blocks if x != y]
    candidates += [Action("pick-up", (x,)) for x in blocks]
    candidates += [Action("put-down", (x,)) for x in blocks]
    candidates += [Action("stack", (x, y)) for x in blocks for y in blocks if x != y]
    legal = []
    for action in candidates:
        try:
            apply(state, action)
        except IllegalAction:
            continue
        legal.append(action)
    return legal


@dataclass(frozen=True)
class PlanCheck:
    """The result of running a plan: legal throughout, and whether it reaches the goal."""

    legal: bool
    reached_goal: bool
    final_state: State
    failed_step: int | None = None  # 0-based index of the first illegal/unparsable action
    reason: str | None = None

    @property
    def success(self) -> bool:
        return self.legal and self.reached_goal


def check_plan(init: State, goal: State, plan: Iterable[str | Action]) -> PlanCheck:
    state = init
    for i, step in enumerate(plan):
        try:
            action = step if isinstance(step, Action) else parse_action(step)
            state = apply(state, action)
        except (BlocksworldError, IllegalAction) as exc:
            return PlanCheck(False, satisfies(state, goal), state, i, str(exc))
    reached = satisfies(state, goal)
    return PlanCheck(True, reached, state, None, None if reached else "the goal is not reached")
