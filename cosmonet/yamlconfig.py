"""YAML configuration files: the one loader and the one ``--set key=value`` override parser.

Used by the campaign configuration (:mod:`cosmonet.campaign.config`), the campaign store
(``campaign.yaml`` of a campaign directory) and the training configuration
(:mod:`cosmonet.train.trainconfig`). Errors are one-line :class:`~cosmonet.errors.InputError`.
"""
import copy
import re

import yaml

from .errors import InputError, shown


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, line):
        super().__init__(f"key {key!r} given twice")
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that gives one key twice (PyYAML keeps
    the last silently, so a config's earlier value would be dropped without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
            except TypeError:                   # an unhashable key: the base class says so
                break
            if dup:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path, what=""):
    """The parsed content of the YAML file ``path`` (any type; None for an empty file).

    what: how messages name the file, e.g. ``"config"`` gives ``cannot read config PATH
    (No such file or directory)`` and ``config PATH is not valid YAML at line 3``.
    """
    label = f"{what} {path}" if what else str(path)
    if len(label) > 200:                # a 100k-character path: its start and its length
        label = f"{what} {shown(str(path), 120)}".strip()
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise InputError(f"{label}: key {shown(str(exc.key))} is given twice (line {exc.line}); keep one") from None
    except OSError as exc:
        raise InputError(f"cannot read {label} ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{label} is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise InputError(f"{label} is not valid YAML{where}") from None


def parse_override(item):
    """``"a.b=value"`` -> (["a", "b"], value parsed as YAML; "" for an empty value).

    The value is read by the loader of the files, so ``--set 'splits={train: 1, train: 2}'``
    is refused as a key given twice, as in a file. Messages quote a long item's prefix only."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--set {shown(item)}: expected key=value")
    if not re.fullmatch(r"[\w-]+(\.[\w-]+)*", key.strip()):
        raise InputError(f"--set {shown(item)}: the key must be names joined by dots (e.g. cosmology.lhs_seed)")
    name = key.strip()
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader) if text.strip() else ""
    except _DuplicateKey as exc:
        raise InputError(f"--set {name}: key {shown(exc.key)} is given twice in the value; keep one") from None
    except yaml.YAMLError:
        raise InputError(f"--set {name}: cannot parse the value {shown(text)} as YAML") from None
    return name.split("."), value


def apply_overrides(raw, overrides):
    """Apply ``key=value`` / ``a.b.c=value`` overrides (values parsed as YAML) to a dict copy."""
    raw = copy.deepcopy(raw)
    for item in overrides or ():
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            elif not isinstance(node[part], dict):
                raise InputError(f"config: {'.'.join(path)} is not a mapping")
            node = node[part]
        node[path[-1]] = value
    return raw
