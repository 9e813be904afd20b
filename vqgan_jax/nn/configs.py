"""The one way our frozen config dataclasses are built from JSON-like dicts."""

import dataclasses
from typing import Any, Dict, Sequence


def from_dict(cls, d: Dict[str, Any], tuple_fields: Sequence[str] = ()):
  """cls(**d), refusing unknown keys by name; `tuple_fields` (JSON lists) become int
  tuples so the result stays hashable."""
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - fields)
  if unknown:
    raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; expected a subset of "
                     f"{sorted(fields)}")
  d = dict(d)
  for k in tuple_fields:
    if k in d:
      d[k] = tuple(int(v) for v in d[k])
  return cls(**d)
