"""``tf.train.Example`` without TensorFlow or protoc.

The message classes are built at import time from a hand-written ``FileDescriptorProto`` with the
same package (``tensorflow``) and field numbers as TensorFlow's ``example.proto`` /
``feature.proto``, so the bytes are wire-compatible in both directions. They live in a private
descriptor pool: importing TensorFlow in the same process (tests do) registers its own
``tensorflow.Example`` in the default pool, and the two must not collide.
"""

from __future__ import annotations

from typing import Union

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

FieldDescriptorProto = descriptor_pb2.FieldDescriptorProto

FeatureValue = Union[np.ndarray, list[bytes]]
"""Decoded feature: float32 / int64 arrays for numeric lists, a list of bytes for bytes lists."""


def _field(name: str, number: int, ftype: int, *, repeated: bool = False, type_name: str | None = None,
           packed: bool = False, oneof: int | None = None) -> FieldDescriptorProto:
    f = FieldDescriptorProto(name=name, number=number, type=ftype,
                             label=FieldDescriptorProto.LABEL_REPEATED if repeated else FieldDescriptorProto.LABEL_OPTIONAL)
    if type_name:
        f.type_name = type_name
    if packed:
        f.options.packed = True
    if oneof is not None:
        f.oneof_index = oneof
    return f


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    T = FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="lavla/tensorflow_example.proto", package="tensorflow", syntax="proto3")

    fd.message_type.add(name="BytesList").field.append(_field("value", 1, T.TYPE_BYTES, repeated=True))
    fd.message_type.add(name="FloatList").field.append(_field("value", 1, T.TYPE_FLOAT, repeated=True, packed=True))
    fd.message_type.add(name="Int64List").field.append(_field("value", 1, T.TYPE_INT64, repeated=True, packed=True))

    feature = fd.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    feature.field.extend([
        _field("bytes_list", 1, T.TYPE_MESSAGE, type_name=".tensorflow.BytesList", oneof=0),
        _field("float_list", 2, T.TYPE_MESSAGE, type_name=".tensorflow.FloatList", oneof=0),
        _field("int64_list", 3, T.TYPE_MESSAGE, type_name=".tensorflow.Int64List", oneof=0),
    ])

    features = fd.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")  # map<string, Feature> is a repeated entry message
    entry.options.map_entry = True
    entry.field.extend([
        _field("key", 1, T.TYPE_STRING),
        _field("value", 2, T.TYPE_MESSAGE, type_name=".tensorflow.Feature"),
    ])
    features.field.append(_field("feature", 1, T.TYPE_MESSAGE, repeated=True, type_name=".tensorflow.Features.FeatureEntry"))

    fd.message_type.add(name="Example").field.append(
        _field("features", 1, T.TYPE_MESSAGE, type_name=".tensorflow.Features"))
    return fd


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


def _cls(name: str) -> type:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"tensorflow.{name}"))


Example = _cls("Example")
Features = _cls("Features")
Feature = _cls("Feature")
BytesList = _cls("BytesList")
FloatList = _cls("FloatList")
Int64List = _cls("Int64List")


def decode_example(payload: bytes) -> dict[str, FeatureValue]:
    """Parses a serialized Example into ``{key: float32 array | int64 array | list[bytes]}``.

    A feature with no kind set (legal on the wire) decodes to an empty float32 array.
    """
    ex = Example.FromString(payload)
    out: dict[str, FeatureValue] = {}
    for key, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        if kind == "bytes_list":
            out[key] = list(feat.bytes_list.value)
        elif kind == "float_list":
            out[key] = np.asarray(feat.float_list.value, dtype=np.float32)
        elif kind == "int64_list":
            out[key] = np.asarray(feat.int64_list.value, dtype=np.int64)
        else:
            out[key] = np.zeros((0,), np.float32)
    return out


def encode_example(features: dict[str, FeatureValue | list[str] | bytes | str]) -> bytes:
    """Serializes ``{key: values}`` as an Example.

    Floating arrays become ``float_list`` (as float32), integer/bool arrays ``int64_list``, and
    bytes / str / lists of them ``bytes_list`` (str encoded as UTF-8), mirroring TFDS.
    """
    ex = Example()
    fmap = ex.features.feature
    for key, value in features.items():
        feat = fmap[key]
        if isinstance(value, (bytes, str)):
            value = [value]
        if isinstance(value, list) and (not value or isinstance(value[0], (bytes, str))):
            feat.bytes_list.value.extend(v.encode("utf-8") if isinstance(v, str) else v for v in value)
            continue
        arr = np.asarray(value)
        if arr.dtype.kind == "f":
            feat.float_list.value.extend(arr.astype(np.float32, copy=False).ravel().tolist())
        elif arr.dtype.kind in "iub":
            feat.int64_list.value.extend(arr.astype(np.int64, copy=False).ravel().tolist())
        else:
            raise TypeError(f"feature {key!r}: cannot encode dtype {arr.dtype} in a tf.train.Example")
    return ex.SerializeToString(deterministic=True)
