"""The committed generated code in slperf/v1 must be exactly what `make proto` produces from proto/."""

from __future__ import annotations

from tools import protogen


def test_committed_stubs_match_the_proto_files(tmp_path):
    generated = protogen.generate(tmp_path)
    assert generated, "protoc produced nothing"
    committed_dir = protogen.ROOT / "slperf" / "v1"
    names = {p.name for p in generated}
    assert names == {p.name for p in committed_dir.glob("*_pb2*.py*")}, "run `make proto`: files differ"
    for path in generated:
        assert path.read_bytes() == (committed_dir / path.name).read_bytes(), f"{path.name} is stale: run `make proto`"


def test_protobuf_style():
    for proto in protogen.proto_files():
        text = proto.read_text()
        assert "package slperf.v1;" in text
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("enum "):
                enum = stripped.split()[1]
                body = text[text.index(line) :].split("}", 1)[0]
                first_value = [ln for ln in body.splitlines()[1:] if "=" in ln][0]
                assert "_UNSPECIFIED = 0" in first_value, f"{enum} must start with an _UNSPECIFIED zero value"
