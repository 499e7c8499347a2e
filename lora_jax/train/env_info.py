"""The exact versions of the environment a run used, for ``results.json``.

``package_versions()`` walks lora-jax's dependency closure through the installed distributions'
metadata (``importlib.metadata``; markers evaluated for this interpreter, extras followed), so a
record names the version of every package that can influence a result. ``make setup`` installs
that closure from ``requirements.lock`` (exact versions and hashes; ``make lock`` regenerates it).
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterable
from importlib import metadata

from packaging.requirements import Requirement


def canonical(name: str) -> str:
    """PEP 503 normalized distribution name (``Flax`` / ``flax_x`` -> ``flax`` / ``flax-x``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_closure(
    roots: Iterable[str], extras: Iterable[str] = ()
) -> dict[str, tuple[set[str], list[Requirement]]]:
    """``{canonical name: (extras requested, requirements naming it)}`` for the requirement
    strings ``roots`` and, recursively, the installed metadata of what they require.
    ``extras`` are those of the root project (e.g. ``("test",)``) for markers in ``roots``.

    Raises PackageNotFoundError naming a required distribution that is not installed.
    """
    found: dict[str, tuple[set[str], list[Requirement]]] = {}
    queue = [(Requirement(r), set(extras)) for r in roots]
    while queue:
        req, env_extras = queue.pop()
        if req.marker is not None and not any(
            req.marker.evaluate({"extra": e}) for e in (env_extras or {""})
        ):
            continue
        name = canonical(req.name)
        seen_extras, reqs = found.setdefault(name, (set(), []))
        reqs.append(req)
        new = set(req.extras) - seen_extras
        if len(reqs) > 1 and not new:
            continue
        seen_extras |= set(req.extras)
        for sub in metadata.distribution(name).requires or []:
            queue.append((Requirement(sub), set(req.extras)))
    return found


def package_versions(project: str = "lora-jax") -> dict[str, str]:
    """``{distribution: version}`` of ``project`` and its installed dependency closure, plus
    ``python``. Without ``project`` installed (e.g. run from a bare checkout): every installed
    distribution."""
    try:
        root = metadata.distribution(project)
        names = [canonical(project), *dependency_closure(root.requires or [])]
    except metadata.PackageNotFoundError:
        names = [canonical(d.metadata["Name"]) for d in metadata.distributions()]
    out = {"python": platform.python_version()}
    for name in sorted(set(names)):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
