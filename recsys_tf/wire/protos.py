"""TF Serving's small configuration protos that the ``tensorflow-serving-api`` wheel leaves out.

``--batching_parameters_file`` (``BatchingParameters``), ``--ssl_config_file`` (``SSLConfig``)
and ``--monitoring_config_file`` (``MonitoringConfig``) are text protos whose messages live in
TF Serving's server sources, not in the API package. They are declared here with the same
package, message, field names, numbers and types, so a file written for
``tensorflow_model_server`` parses the same way here (``max_batch_size { value: 128 }`` --
the fields are ``google.protobuf`` wrappers -- ``server_key: "..."``,
``prometheus_config { enable: true }``).
"""
from __future__ import annotations

import logging
from typing import Type

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2  # noqa: F401  (registers google/protobuf/wrappers.proto)

log = logging.getLogger(__name__)

_F = descriptor_pb2.FieldDescriptorProto
_FILE_NAME = "recsys_tf/wire/tf_serving_config_subset.proto"

# (message, [(field, number, type, label, type_name)]) as in TF Serving's
# session_bundle_config.proto, ssl_config.proto and monitoring_config.proto.
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_MSG, _STR, _BOOL, _I64 = _F.TYPE_MESSAGE, _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_INT64
_I64W, _STRW = ".google.protobuf.Int64Value", ".google.protobuf.StringValue"
_MESSAGES = [
    ("BatchingParameters", [
        ("max_batch_size", 1, _MSG, _OPT, _I64W),
        ("batch_timeout_micros", 2, _MSG, _OPT, _I64W),
        ("max_enqueued_batches", 3, _MSG, _OPT, _I64W),
        ("num_batch_threads", 4, _MSG, _OPT, _I64W),
        ("thread_pool_name", 5, _MSG, _OPT, _STRW),
        ("allowed_batch_sizes", 6, _I64, _REP, None),
        ("pad_variable_length_inputs", 7, _BOOL, _OPT, None),
    ]),
    ("SSLConfig", [
        ("server_key", 1, _STR, _OPT, None),
        ("server_cert", 2, _STR, _OPT, None),
        ("custom_ca", 3, _STR, _OPT, None),
        ("client_verify", 4, _BOOL, _OPT, None),
    ]),
    ("PrometheusConfig", [
        ("enable", 1, _BOOL, _OPT, None),
        ("path", 2, _STR, _OPT, None),
    ]),
    ("MonitoringConfig", [
        ("prometheus_config", 1, _MSG, _OPT, ".tensorflow.serving.PrometheusConfig"),
    ]),
]


def _build():
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    fdp = descriptor_pb2.FileDescriptorProto(name=_FILE_NAME, package="tensorflow.serving",
                                             syntax="proto3",
                                             dependency=["google/protobuf/wrappers.proto"])
    for name, fields in _MESSAGES:
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"tensorflow.serving.{name}")) for name, _ in _MESSAGES}


_CLASSES = _build()
BatchingParameters: Type = _CLASSES["BatchingParameters"]
SSLConfig: Type = _CLASSES["SSLConfig"]
MonitoringConfig: Type = _CLASSES["MonitoringConfig"]


def parse_text(text: str, cls, source: str = "<text>"):
    """Parse a text proto into a new ``cls``; unknown fields are skipped with a warning
    (TF Serving releases add batching knobs; those not declared here are not implemented --
    large-batch splitting is available through ``BatchingOptions`` in Python only)."""
    message = cls()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as strict_error:
        message = cls()
        try:
            text_format.Parse(text, message, allow_unknown_field=True)
        except text_format.ParseError:
            raise ValueError(f"Invalid protobuf file: '{source}': {strict_error}") from None
        log.warning("%s: ignoring fields this server does not implement (%s)", source,
                    strict_error)
    return message


def read_text_file(path: str, cls):
    with open(path, "r", encoding="utf-8") as f:
        return parse_text(f.read(), cls, path)
