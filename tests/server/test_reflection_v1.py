"""Server reflection v1, spoken by a client built from the v1 descriptors (not grpcio-reflection's v1alpha classes):
it lists the services and describes simdex's and its own, on a real server."""
import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from simdex.server import reflection

METHOD = f"/{reflection.V1_SERVICE}/ServerReflectionInfo"


@pytest.fixture
def ask(server):
    pool = descriptor_pool.Default()
    request, response = (message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.reflection.v1.{name}"))
                         for name in ("ServerReflectionRequest", "ServerReflectionResponse"))
    channel = grpc.insecure_channel(server.target)
    call = channel.stream_stream(METHOD, request_serializer=request.SerializeToString,
                                 response_deserializer=response.FromString)
    yield lambda **fields: next(call(iter([request(**fields)]), timeout=10))
    channel.close()


def test_v1_lists_every_service_with_both_reflection_versions(ask):
    names = [s.name for s in ask(list_services="").list_services_response.service]
    assert names == ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                     "grpc.reflection.v1alpha.ServerReflection", "simdex.v1.Simdex"]


@pytest.mark.parametrize("symbol, file", [("simdex.v1.Simdex", "simdex/proto/simdex.proto"),
                                          ("grpc.reflection.v1.ServerReflection", reflection.V1_FILE)])
def test_v1_describes_a_service_by_symbol(ask, symbol, file):
    r = ask(file_containing_symbol=symbol)
    protos = [descriptor_pb2.FileDescriptorProto.FromString(b)
              for b in r.file_descriptor_response.file_descriptor_proto]
    assert file in [p.name for p in protos]
    assert r.original_request.file_containing_symbol == symbol


def test_v1_unknown_symbol_is_not_found(ask):
    r = ask(file_containing_symbol="no.such.Service")
    assert r.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
