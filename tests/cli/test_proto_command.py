"""`simdex proto` gives the .proto the package was generated from, comments included, printed or written."""
from pathlib import Path

from simdex.cli.main import main

SOURCE = Path(__file__).resolve().parents[2] / "proto" / "simdex" / "v1" / "simdex.proto"


def test_proto_prints_the_contract(capsys):
    assert main(["proto"]) == 0
    assert capsys.readouterr().out == SOURCE.read_text()


def test_proto_out_writes_it_where_its_package_puts_it(tmp_path, capsys):
    assert main(["proto", "--out", str(tmp_path / "protos")]) == 0
    written = tmp_path / "protos" / "simdex" / "v1" / "simdex.proto"
    assert capsys.readouterr().out.strip() == str(written)
    assert written.read_text() == SOURCE.read_text()
