"""The light client imports without the server's heavy dependencies; the server names the missing extra."""
import subprocess
import sys

LIGHT = """
import sys
import simdex.clients, simdex.proto.simdex_pb2_grpc
heavy = sorted(m for m in ("torch", "faiss", "sqlalchemy", "alembic", "torchvision", "sklearn", "simdex.server",
                           "simdex.service", "simdex.store", "simdex.index", "simdex.embedder", "simdex.estimators")
               if m in sys.modules)
print(",".join(heavy))
"""

NO_FAISS = """
import sys
sys.modules["faiss"] = None  # as if neither faiss-cpu nor faiss-gpu were installed
try:
    import simdex.service.facade
except ImportError as exc:
    print(exc)
"""


def test_client_imports_without_server_dependencies():
    out = subprocess.run([sys.executable, "-c", LIGHT], check=True, capture_output=True, text=True).stdout
    assert out.strip() == ""


def test_server_without_faiss_names_the_extra_to_install():
    out = subprocess.run([sys.executable, "-c", NO_FAISS], check=True, capture_output=True, text=True).stdout
    assert "simdex[server,cpu]" in out and "simdex[server,gpu]" in out
