"""Server reflection under both names clients ask for: `grpc.reflection.v1` (grpcurl >= 1.8.8, grpc-js's and
Go's current clients) and the deprecated `grpc.reflection.v1alpha` (older clients, grpcurl 1.8.6).

grpcio-reflection (1.85) implements v1alpha only. v1 is the same protocol under a new package: its messages have
the same fields with the same numbers, so the v1alpha servicer's messages are v1's on the wire, and one servicer
answers both names. The v1 file descriptor (v1alpha's, renamed) joins the default pool, so that reflection can
describe the v1 service itself and a client can call it by its v1 name.
"""
from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_grpc
from grpc_reflection.v1alpha.reflection import ReflectionServicer

V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"  # upstream's file name for the v1 protocol
V1ALPHA_SERVICE = v1alpha.DESCRIPTOR.services_by_name["ServerReflection"]
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's file descriptor moved to the v1 package (and file name), with upstream v1's language options."""
    fd = descriptor_pb2.FileDescriptorProto()
    v1alpha.DESCRIPTOR.CopyToProto(fd)
    old, new = f".{fd.package}.", f".{V1_PACKAGE}."
    fd.name, fd.package = V1_FILE, V1_PACKAGE
    fd.options.Clear()
    fd.options.java_package, fd.options.java_outer_classname = "io.grpc.reflection.v1", "ServerReflectionProto"
    fd.options.java_multiple_files = True
    fd.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    for message in fd.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # proto2 presence: scalars must stay without one
                field.type_name = field.type_name.replace(old, new, 1)
    for method in fd.service[0].method:
        method.input_type = method.input_type.replace(old, new, 1)
        method.output_type = method.output_type.replace(old, new, 1)
    return fd


def _add_v1_to_default_pool() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)  # already there (another library registered v1): keep that one
    except KeyError:
        pool.AddSerializedFile(_v1_file().SerializeToString())


_add_v1_to_default_pool()


def enable_reflection(server: grpc.Server, service_names: tuple[str, ...]) -> None:
    """Serve reflection v1 and v1alpha on `server`, listing `service_names` and both reflection services."""
    servicer = ReflectionServicer((*service_names, V1_SERVICE, V1ALPHA_SERVICE.full_name))
    v1alpha_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=v1alpha.ServerReflectionRequest.FromString,
            response_serializer=v1alpha.ServerReflectionResponse.SerializeToString),
    }),))
