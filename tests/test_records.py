"""Reading JSONL/CSV/TSV/dicts into validated records, with errors that say where."""

from __future__ import annotations

import gzip

import pytest

from helpers import write_jsonl
from tansaku.index import FieldMap, IngestError, read_dicts, read_file
from tansaku.index.records import unique_ids


def test_jsonl_fields_title_and_metadata(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"id": 1, "title": "東京", "text": "日本の首都", "lang": "ja", "tags": ["a", "b"]},
            {"id": "x", "text": "no title", "metadata": {"year": 2020}},
        ],
    )
    recs = list(read_file(path))
    assert [r.id for r in recs] == ["1", "x"]
    assert recs[0].title == "東京" and recs[0].indexed_text == "東京 日本の首都"
    assert recs[0].metadata == {"lang": "ja", "tags": ["a", "b"]}
    assert recs[1].title == "" and recs[1].indexed_text == "no title"
    assert recs[1].metadata == {"year": 2020}


def test_csv_tsv_gzip_and_custom_fields(tmp_path):
    (tmp_path / "d.csv").write_text('qid,question,answer\nq1,"富士山, 高さ",3776m\n', encoding="utf-8")
    fields = FieldMap(id="qid", text="answer", title="question")
    (rec,) = read_file(tmp_path / "d.csv", fields)
    assert (rec.id, rec.title, rec.text) == ("q1", "富士山, 高さ", "3776m")
    with gzip.open(tmp_path / "d.tsv.gz", "wt", encoding="utf-8") as fh:
        fh.write("id\ttext\tlang\n7\t本文\tja\n")
    (rec,) = read_file(tmp_path / "d.tsv.gz")
    assert (rec.id, rec.text, dict(rec.metadata)) == ("7", "本文", {"lang": "ja"})


@pytest.mark.parametrize(
    "line, field, words",
    [
        ('{"id": "a"}', "text", "missing text"),
        ('{"text": "x"}', "id", "missing id"),
        ('{"id": "a", "text": 5}', "text", "must be a string"),
        ('{"id": "a", "text": "   "}', "text", "empty"),
        ('{"id": [1], "text": "x"}', "id", "string or integer"),
        ('{"id": "a", "text": "x", "meta": {"nested": 1}}', "meta", "scalars"),
        ('{"id": "a", "text": "x", "title": 3}', "title", "must be a string"),
    ],
)
def test_bad_record_names_file_line_field(tmp_path, line, field, words):
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"id": "ok", "text": "fine"}', line])
    with pytest.raises(IngestError) as err:
        list(read_file(path))
    msg = str(err.value)
    assert "bad.jsonl" in msg and "line 2" in msg and repr(field) in msg and words in msg
    assert err.value.line == 2 and err.value.field == field


def test_invalid_json_and_non_utf8_and_not_object(tmp_path):
    path = write_jsonl(tmp_path / "j.jsonl", ['{"id": "a", "text": "x"}', '{"id": "b", "text": '])
    with pytest.raises(IngestError, match=r"j.jsonl, line 2: invalid JSON"):
        list(read_file(path))
    (tmp_path / "u.jsonl").write_bytes(b'{"id": "a", "text": "x"}\n{"id": "b", "text": "\xff"}\n')
    with pytest.raises(IngestError, match=r"u.jsonl, line 2: not valid UTF-8"):
        list(read_file(tmp_path / "u.jsonl"))
    path = write_jsonl(tmp_path / "l.jsonl", ["[1, 2]"])
    with pytest.raises(IngestError, match="line 1: expected a JSON object"):
        list(read_file(path))
    (tmp_path / "u.csv").write_bytes(b"id,text\n1,ok\n2,\xfe\xff\n")
    with pytest.raises(IngestError, match=r"u.csv.*not valid UTF-8"):
        list(read_file(tmp_path / "u.csv"))


def test_csv_header_and_row_problems(tmp_path):
    (tmp_path / "h.csv").write_text("key,body\n1,x\n", encoding="utf-8")
    with pytest.raises(IngestError, match=r"h.csv, line 1, field 'id': no column.*--id-field NAME"):
        list(read_file(tmp_path / "h.csv"))
    (tmp_path / "t.csv").write_text("id,body\n1,x\n", encoding="utf-8")
    with pytest.raises(IngestError, match=r"t.csv, line 1, field 'text': no column.*--text-field NAME"):
        list(read_file(tmp_path / "t.csv"))
    (tmp_path / "r.csv").write_text("id,text\n1,x\n2,y,extra\n", encoding="utf-8")
    with pytest.raises(IngestError, match=r"r.csv, line 3: more cells"):
        list(read_file(tmp_path / "r.csv"))


def test_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "d.xml").write_text("<x/>")
    with pytest.raises(IngestError, match="--format"):
        read_file(tmp_path / "d.xml")
    with pytest.raises(IngestError, match="no such file"):
        read_file(tmp_path / "absent.jsonl")


def test_duplicate_ids_name_both_places(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"id": "a", "text": "1"}, {"id": "b", "text": "2"}, {"id": "a", "text": "3"}]
    )
    with pytest.raises(IngestError) as err:
        list(unique_ids(read_file(path)))
    assert "duplicate id 'a'" in str(err.value)
    # one wording for every location: "file, line N, field 'x'"
    assert (
        str(err.value)
        == f"{path}, line 3, field 'id': duplicate id 'a' (first at {path}, line 1) within one ingest"
    )
    with pytest.raises(
        IngestError,
        match=r"<records>, record 2, field 'id': duplicate id 'a' \(first at <records>, record 1\)",
    ):
        list(unique_ids(read_dicts([{"id": "a", "text": "1"}, {"id": "a", "text": "2"}])))


def test_a_missing_text_or_id_field_points_to_the_option(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", [{"id": "a", "body": "本文", "lang": "ja"}])
    with pytest.raises(IngestError) as err:
        list(read_file(path))
    assert str(err.value) == (
        f"{path}, line 1, field 'text': missing text (the record has 'id', 'body', 'lang'; "
        "--text-field NAME reads it from another field)"
    )
    with pytest.raises(IngestError, match=r"missing id \(the record has 'key', 'text'; --id-field NAME"):
        list(read_dicts([{"key": 1, "text": "x"}]))
    # a field that is there but null is not a naming problem: no hint
    with pytest.raises(IngestError, match=r"field 'text': missing text$"):
        list(read_dicts([{"id": 1, "text": None}]))


def test_dicts_name_record_number():
    with pytest.raises(IngestError, match=r"<records>, record 2, field 'text'"):
        list(read_dicts([{"id": 1, "text": "a"}, {"id": 2}]))
