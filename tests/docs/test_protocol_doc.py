"""docs/protocol.md is the protocol's normative reference, so it must keep up with proto/: every message, field,
oneof, enum value, service and method of every ``proto/slperf/v1/*.proto`` appears in it as a code span (the
field ``max_payload_bytes`` as `` `max_payload_bytes` ``), it states the current PROTOCOL_VERSION, and its example
exchanges are the ones ``slperf paradigms --details`` prints. Names come from the generated descriptors, not from
parsing the .proto text, so nested messages and enums are covered and map-entry types (generated) are not."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor

from slperf.common.paradigms import registry
from slperf.common.wire.serde import PROTOCOL_VERSION

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
PROTO_DIR = ROOT / "proto" / "slperf" / "v1"


def proto_files() -> list[FileDescriptor]:
    """The descriptor of every .proto in proto/slperf/v1, from its generated module (a new file is covered too)."""
    files = sorted(PROTO_DIR.glob("*.proto"))
    assert files, f"no .proto files under {PROTO_DIR}"
    return [importlib.import_module(f"slperf.v1.{path.stem}_pb2").DESCRIPTOR for path in files]


def _messages(message: Descriptor) -> Iterator[Descriptor]:
    yield message
    for nested in message.nested_types:
        if not nested.GetOptions().map_entry:  # the generated XxxEntry of a map field
            yield from _messages(nested)


def _enum_names(enum: EnumDescriptor) -> Iterator[tuple[str, str]]:
    yield f"enum {enum.full_name}", enum.name
    for value in enum.values:
        yield f"value of {enum.full_name}", value.name


def proto_names() -> list[tuple[str, str]]:
    """(what it is, name) for everything of proto/ the document must name."""
    names: list[tuple[str, str]] = []
    for file in proto_files():
        for message in file.message_types_by_name.values():
            for m in _messages(message):
                names.append((f"message in {file.name}", m.name))
                names += [(f"field of {m.full_name}", f.name) for f in m.fields]
                names += [(f"oneof of {m.full_name}", o.name) for o in m.oneofs]
                for enum in m.enum_types:
                    names += list(_enum_names(enum))
        for enum in file.enum_types_by_name.values():
            names += list(_enum_names(enum))
        for service in file.services_by_name.values():
            names.append((f"service in {file.name}", service.name))
            names += [(f"method of {service.full_name}", method.name) for method in service.methods]
    return names


def code_spans(markdown: str) -> set[str]:
    """The text of every inline code span (`...`) outside fenced code blocks."""
    prose = re.sub(r"^```.*?^```[^\n]*$", "", markdown, flags=re.MULTILINE | re.DOTALL)
    return set(re.findall(r"`([^`\n]+)`", prose))


def undocumented(names: list[tuple[str, str]], markdown: str) -> list[str]:
    spans = code_spans(markdown)
    return sorted({f"{what}: `{name}`" for what, name in names if name not in spans})


def test_the_checker_sees_every_message_and_field_of_the_protos() -> None:
    names = {name for _, name in proto_names()}
    # One of each kind, so a checker that silently collected nothing (or skipped a file) cannot pass.
    assert {"Welcome", "max_payload_bytes", "ExchangeStage", "down_optional", "body", "kind"} <= names
    assert {"Chunk", "crc32", "DType", "DTYPE_BFLOAT16", "PHASE_EVAL"} <= names
    assert {"Control", "StartRun", "RunStatus", "summary_json", "SplitLearning", "Session"} <= names
    assert not any(name.endswith("Entry") for _, name in proto_names()), "map entries are generated, not documented"


def test_every_message_field_enum_value_and_method_of_the_protos_is_in_the_protocol_doc() -> None:
    missing = undocumented(proto_names(), DOC.read_text(encoding="utf-8"))
    assert not missing, "docs/protocol.md does not name (as a code span):\n  " + "\n  ".join(missing)


def test_a_name_missing_from_the_doc_is_reported() -> None:
    doc = "The `Welcome` message has `max_payload_bytes`."
    assert undocumented([("message", "Welcome"), ("field", "max_payload_bytes")], doc) == []
    assert undocumented([("field", "max_payload")], doc) == ["field: `max_payload`"]  # a span, not a substring
    fenced = "```\n`hidden`\n```\n"
    assert undocumented([("field", "hidden")], fenced) == ["field: `hidden`"]  # diagrams do not count


def test_the_protocol_doc_states_the_current_protocol_version() -> None:
    doc = DOC.read_text(encoding="utf-8")
    title = doc.splitlines()[0]
    assert re.fullmatch(rf"# .*, version {PROTOCOL_VERSION}", title), title
    assert f"`PROTOCOL_VERSION = {PROTOCOL_VERSION}`" in doc
    assert re.search(rf"^\| {PROTOCOL_VERSION} \| ", doc, flags=re.MULTILINE), "no history row for this version"


@pytest.mark.parametrize("paradigm", ["vanilla", "async", "ushaped", "vertical", "fedavg"])
def test_the_example_exchanges_in_the_doc_are_what_slperf_paradigms_details_prints(paradigm: str) -> None:
    from slperf.cli import _example_exchange  # what `slperf paradigms --details` prints

    doc = DOC.read_text(encoding="utf-8")
    for line in _example_exchange(registry.get(paradigm)):
        assert f"\n  {line}\n" in doc, f"docs/protocol.md lacks the {paradigm} exchange line: {line}"
