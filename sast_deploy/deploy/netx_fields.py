"""The fields of a netx HDF5 network, one at a time: a string written as netx 0.6.0 reads it,
and validated readers of what a file declares (a dataset's size and dtype are checked before
it is read; a malformed field is a :class:`NetxFormatError` naming the file and field).
:mod:`sast_deploy.deploy.export` reads and writes whole networks with them, each layer kind
(:mod:`sast_deploy.deploy.layers`) its own fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import h5py
import numpy as np

from ..errors import SastDeployError


class NetxFormatError(SastDeployError, ValueError):
    """An HDF5 network is missing a field or holds a malformed one; names file and field."""


#: Limits on what a netx file may declare, checked before anything is read: a file from
#: elsewhere is data, and a tiny file can declare a chunked 10^6 x 10^6 dataset.
MAX_WEIGHTS = 2**27  # elements of one weight dataset (1 GiB as int64; Loihi 2 cores hold far fewer)
MAX_FIELD_ELEMENTS = 16  # every other dataset: a shape, a stride, a scalar
MAX_DEPTH = 4  # /layer/<i>/neuron/<field>
MAX_OBJECTS = 100_000  # groups and datasets in the file
MAX_METADATA_BYTES = 1 << 20
#: dtype kinds a field may have: integers, floats, booleans, fixed-length byte strings
FIELD_KINDS = "iufbS"


def write_string(group: h5py.Group, key: str, value: str) -> None:
    """A string field as netx reads it: one fixed-length byte string (at most 10 bytes)."""
    group.create_dataset(key, (1,), "S10", [value.encode()])


def dataset(group: h5py.Group, key: str, path: Path, max_elements: int = MAX_FIELD_ELEMENTS) -> h5py.Dataset:
    """The dataset ``group/key``, its declared size and dtype checked (nothing read yet)."""
    if key not in group:
        raise NetxFormatError(f"{path}: missing field {group.name}/{key}")
    ds = group[key]
    if not isinstance(ds, h5py.Dataset):
        raise NetxFormatError(f"{path}: field {group.name}/{key} must be a dataset, not a group")
    if ds.shape is None or ds.size > max_elements:
        raise NetxFormatError(f"{path}: field {group.name}/{key} declares shape {ds.shape}; at most {max_elements} values")
    if ds.dtype.kind not in FIELD_KINDS and h5py.check_string_dtype(ds.dtype) is None:
        raise NetxFormatError(f"{path}: field {group.name}/{key} has dtype {ds.dtype}; numbers or a string expected")
    return ds


def field(group: h5py.Group, key: str, path: Path, max_elements: int = MAX_FIELD_ELEMENTS):
    """The value of the dataset ``group/key``, read after :func:`dataset`'s checks."""
    return dataset(group, key, path, max_elements)[()]


def subgroup(parent: h5py.Group, key: str, path: Path) -> h5py.Group:
    """The group ``parent/key`` (a dataset there is refused)."""
    if key not in parent:
        raise NetxFormatError(f"{path}: missing group {parent.name.rstrip('/')}/{key}")
    if not isinstance(parent[key], h5py.Group):
        raise NetxFormatError(f"{path}: {parent.name.rstrip('/')}/{key} must be a group, not a dataset")
    return parent[key]


def read_string(group: h5py.Group, key: str, path: Path) -> str:
    """A string field as :func:`write_string` stores it (one fixed-length byte string)."""
    value = np.asarray(field(group, key, path))
    if value.dtype.kind not in "SO" or value.size != 1 or not isinstance(value.reshape(-1)[0], (bytes, str)):
        raise NetxFormatError(f"{path}: field {group.name}/{key} must be a string, got {value.dtype} {value.tolist()!r}"[:300])
    text = value.reshape(-1)[0]
    return text.decode(errors="replace") if isinstance(text, bytes) else text


def int_scalar(group: h5py.Group, key: str, path: Path) -> int:
    """One integer field."""
    value = int_array(group, key, path)
    if value.size != 1:
        raise NetxFormatError(f"{path}: field {group.name}/{key} must be one integer, got shape {value.shape}")
    return int(value.reshape(-1)[0])


def int_array(group: h5py.Group, key: str, path: Path, max_elements: int = MAX_FIELD_ELEMENTS) -> np.ndarray:
    """An integer field as int64 (floats that are whole numbers are accepted, as netx casts them)."""
    value = np.asarray(field(group, key, path, max_elements))
    if value.dtype.kind not in "iu":
        if value.dtype.kind == "f" and np.all(np.isfinite(value)) and np.all(value == np.round(value)):
            return value.astype(np.int64)
        raise NetxFormatError(
            f"{path}: field {group.name}/{key} must hold integers (netx casts with .astype(int), "
            f"which would silently truncate), got dtype {value.dtype}"
        )
    return value.astype(np.int64)


def pair(group: h5py.Group, key: str, path: Path) -> Tuple[int, int]:
    """A (height, width) pair field such as a stride; one integer stands for both."""
    value = int_array(group, key, path)
    if value.size not in (1, 2):
        raise NetxFormatError(f"{path}: field {group.name}/{key} must hold 1 or 2 integers, got shape {value.shape}")
    return tuple(int(s) for s in np.broadcast_to(value.reshape(-1), (2,)))


def attribute(obj, key: str, default, path: Path):
    """An attribute's value, its size checked before it is read (a JSON text or a number)."""
    if key not in obj.attrs:
        return default
    attr = obj.attrs.get_id(key)
    if attr.get_storage_size() > MAX_METADATA_BYTES:
        raise NetxFormatError(f"{path}: attribute {obj.name} {key} is {attr.get_storage_size()} bytes")
    try:
        value = obj.attrs[key]
    except (OSError, TypeError, ValueError) as exc:
        raise NetxFormatError(f"{path}: attribute {obj.name} {key} cannot be read ({exc})") from None
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value
