"""`make bench`'s table (bench/run_all.py): every report read, targets marked, one bad report loses no other row."""
import bench.run_all as run_all


def test_declared_row_is_marked_against_its_target():
    out = "halopsa ...\n  mean records/s: python 10,000, declared 9,500\n"
    [row] = run_all.parse_declared(out)
    assert row["ratio"] == 0.95
    assert row["target"] == "ratio >= 0.9"
    assert row["met"] is True
    [row] = run_all.parse_declared(out.replace("9,500", "8,000"))
    assert row["met"] is False


def test_a_report_that_cannot_be_read_becomes_that_benchmarks_error_not_a_crash():
    def unreadable(_out):
        raise ValueError("no such figure")

    result = run_all.run_one("run_all", ["--help"], unreadable, timeout=60)
    assert result["rows"] == []
    assert "could not be read" in result["error"]
    assert "FAILED" in run_all.table([result])
