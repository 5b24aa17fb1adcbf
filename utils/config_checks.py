"""Fail at start, with the key and the valid choices named, instead of deep inside a module.

Two layers: `explain_override_error` turns Hydra's composition errors (unknown key, unknown group
option) into a message listing what is valid; `check_targets` compares every `_target_` node's
keys with the signature of the class it builds, before anything is instantiated.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from common.errors import ConfigError  # noqa: F401  (raised here, imported from here by older code)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _import(target: str):
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"_target_={target!r} cannot be imported: {e}") from e


def _accepted_keys(obj) -> tuple[set[str], bool]:
    sig = inspect.signature(obj)
    params = sig.parameters.values()
    has_var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    keys = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    # Subclasses forwarding **kwargs to a parent: accept the parents' keys too.
    if has_var_kw and inspect.isclass(obj):
        for base in obj.__mro__[1:]:
            if "__init__" in vars(base) and base is not object:
                k, more = _accepted_keys(base.__init__)
                keys |= k - {"self"}
                if not more:
                    return keys, False
    return keys - {"self"}, has_var_kw


def check_targets(cfg: Any, path: str = "", extra_keys: dict[str, set[str]] | None = None) -> None:
    """Raise ConfigError naming the first key that the built class would not accept."""
    extra_keys = extra_keys or {}
    if isinstance(cfg, DictConfig):
        items = {k: cfg._get_node(k) for k in cfg.keys()}
        if "_target_" in cfg:
            target = cfg._get_node("_target_")._value()
            obj = _import(target)
            keys, var_kw = _accepted_keys(obj)
            if not var_kw:
                given = {k for k in cfg.keys() if not str(k).startswith("_")} | extra_keys.get(path, set())
                unknown = sorted(given - keys)
                if unknown:
                    key = unknown[0]
                    close = difflib.get_close_matches(key, sorted(keys), n=1)
                    hint = f" Did you mean '{close[0]}'?" if close else ""
                    raise ConfigError(f"config key '{path + '.' if path else ''}{key}' is not a parameter of {target}.{hint} "
                                      f"Valid keys: {', '.join(sorted(keys))}")
        for k, node in items.items():
            if isinstance(node, DictConfig):
                check_targets(node, f"{path}.{k}" if path else str(k), extra_keys)


def check_required(cfg: DictConfig, keys: list[str]) -> None:
    """`???` values left unset: name the key and say what it should be."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    for key in keys:
        if key in missing:
            hint = (" (the folder where you unpacked the corpus; docs/corpora.md gives the layout each "
                    "data=<corpus> expects)") if key.endswith("root") else ""
            raise ConfigError(f"{key} is required but not set: pass {key}=...{hint}")


def check_data_root(data_cfg: DictConfig) -> None:
    """A real corpus needs its folder: say which key to set, before any module is built."""
    corpus, root = data_cfg.get("corpus"), data_cfg.get("root")
    if corpus != "synthetic" and root and not Path(str(root)).expanduser().exists():
        raise ConfigError(f"data.root={root} does not exist: set data.root to the folder where you unpacked the "
                          f"{corpus} corpus (docs/corpora.md gives the layout it must have)")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def precheck_overrides(config_name: str, overrides: list[str]) -> str | None:
    """Compose once before Hydra does; return a friendly message if composition fails for a reason we can name."""
    from hydra import compose, initialize_config_dir

    plain = [o for o in overrides if not o.startswith("-") and not o.lstrip("+~").startswith("hydra.")]
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            compose(config_name, overrides=plain)
    except Exception as e:  # Hydra raises several exception types here
        return explain_override_error(e, plain, config_name)
    return None


def explain_override_error(err: Exception, overrides: list[str], config_name: str = "train.yaml") -> str | None:
    """A friendlier message for Hydra composition errors, or None when we have nothing to add."""
    msg = str(err)
    if "Could not find" in msg or "Could not load" in msg:
        for o in overrides:
            group, _, option = o.lstrip("+~").partition("=")
            if (CONFIG_DIR / group).is_dir() and option and option != "null" and option not in group_options(group):
                close = difflib.get_close_matches(option, group_options(group), n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                return f"unknown option {group}={option}.{hint} Valid choices for '{group}': {', '.join(group_options(group))}"
        return None
    if "not in struct" in msg or "Could not override" in msg or "Could not append" in msg:
        for o in overrides:
            key = o.lstrip("+~").partition("=")[0]
            if key and f"'{key}'" in msg:
                groups = [o for o in overrides if "." not in o.partition("=")[0]]
                return f"unknown config key '{key}'. {_valid_keys_hint(key, config_name, groups)}"
    return None


def _valid_keys_hint(key: str, config_name: str, group_overrides: list[str]) -> str:
    parent, _, leaf = key.rpartition(".")
    try:
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=group_overrides)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        keys = sorted(str(k) for k in node.keys()) if isinstance(node, DictConfig) else []
    except Exception:  # best effort: never mask the original error
        keys = []
    if not keys:
        return ""
    close = difflib.get_close_matches(leaf, keys, n=1)
    hint = f"Did you mean '{(parent + '.') if parent else ''}{close[0]}'? " if close else ""
    return f"{hint}Valid keys under '{parent or '<root>'}': {', '.join(keys)}"
