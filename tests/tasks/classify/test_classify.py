"""The classify task: labeled data, fine-tuning a classifier, its predictions, evaluation and CLI."""

import json
import os

import keras
import numpy as np
import pytest

from tests.conftest import labeled_rows, call_cli, write_tsv
from tfllm.data import LabeledData
from tfllm.errors import DataError, RunDirError
from tfllm.tasks.classify.evaluate import classification_report, evaluate_classifier
from tfllm.tasks.classify.finetune import finetune
from tfllm.tasks.classify.predict import load_classifier, predict_proba

# -- labeled data ----------------------------------------------------------------------------

def test_labeled_formats_agree(tmp_path):
    rows = labeled_rows(20)
    tsv = LabeledData(write_tsv(tmp_path / "a.tsv", rows))
    (tmp_path / "a.csv").write_text("label,text\n" + "".join(f'{y},"{t}"\n' for t, y in rows))
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                                              for t, y in rows))
    csv = LabeledData(f"csv:{tmp_path}/a.csv")
    jsonl = LabeledData(f"jsonl:{tmp_path}/a.jsonl")
    assert tsv.train == csv.train == jsonl.train
    assert sorted(tsv.train + tsv.val) == sorted(rows)
    assert len(tsv.val) == 2 and tsv.class_names() == ["neg", "pos"]


def test_labeled_bad_input(tmp_path):
    with pytest.raises(DataError, match="no label column 'label'.*--label-column"):
        LabeledData(write_tsv(tmp_path / "a.tsv", labeled_rows(4), header="text\tstars"))
    (tmp_path / "b.tsv").write_text("text\tlabel\ngood\tpos\nbad\t\nfine\tpos\n")
    with pytest.raises(DataError, match="1 row.*empty 'label' label.*rows 2"):
        LabeledData(f"tsv:{tmp_path}/b.tsv")
    one = LabeledData(write_tsv(tmp_path / "c.tsv", [("good", "pos")] * 10))
    with pytest.raises(DataError, match="single class"):
        one.class_names()
    skipped = LabeledData(write_tsv(tmp_path / "d.tsv",
                                    labeled_rows(10) + [("", "pos"), ("  ", "neg")]))
    assert skipped.skipped_empty == 2 and len(skipped.train) + len(skipped.val) == 10
    with pytest.raises(DataError, match="no column 'body'"):
        LabeledData(f"tsv:{tmp_path}/d.tsv", text_column="body")


def test_longest_holdout_is_sentence_disjoint(tmp_path):
    """--holdout longest: the longest rows are held out and no training row occurs inside
    one (as a word sequence: "fine" inside "a fine film" goes, "fin" would not)."""
    from tfllm.data.tables import split_rows

    rows = [("a fine and moving film", "1"), ("fine", "1"), ("moving film", "1"),
            ("a dull film", "0"), ("dull", "0"), ("film a", "0"), ("fin", "0"),
            ("a fine and dull", "0"), ("lifeless", "0"), ("moving", "1"),
            ("so dull", "0")] * 2
    train, val, dropped = split_rows(rows, "longest")
    assert val == [("a fine and moving film", "1"), ("a fine and moving film", "1")]
    assert sorted({t for t, _ in train}) == ["a dull film", "a fine and dull", "dull",
                                             "film a", "fin", "lifeless",
                                             "so dull"]
    assert dropped == 6 and len(train) + len(val) + dropped == len(rows)
    spec = write_tsv(tmp_path / "r.tsv", rows)
    data = LabeledData(spec, holdout="longest")
    assert data.val == val and data.train == train
    assert data.describe()["holdout"] == "longest"
    assert "holdout" not in LabeledData(spec).describe()  # random: configs as before
    with pytest.raises(DataError, match="unknown --holdout 'sideways'"):
        LabeledData(spec, holdout="sideways")


def test_pair_rows_and_their_errors(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("premise\thypothesis\tlabel\nA man eats.\tSomeone eats.\tyes\n"
                    "A dog runs.\t\tno\nA cat.\tA dog.\tno\n")
    data = LabeledData(f"tsv:{path}", text_column="premise", pair_column="hypothesis")
    assert sorted(data.train + data.val) == [(("A cat.", "A dog."), "no"),
                                             (("A man eats.", "Someone eats."), "yes")]
    assert data.skipped_empty == 1  # an empty second text is skipped, and counted
    assert data.describe()["pair_column"] == "hypothesis"
    with pytest.raises(DataError, match="no column 'second' \\(--pair-column\\)"):
        LabeledData(f"tsv:{path}", text_column="premise", pair_column="second")


def test_pairs_given_to_a_single_text_classifier_are_refused(tiny_classifier, tmp_path):
    out, _ = tiny_classifier
    model, task = load_classifier(out)
    assert task["pair"] is False
    with pytest.raises(DataError, match="classifies single texts, not pairs"):
        predict_proba(model, task, ["a fine film"], pairs=["yes"])
    spec = write_tsv(tmp_path / "x.tsv", labeled_rows(6))
    with pytest.raises(DataError, match="classifies single texts, not pairs"):
        evaluate_classifier(out, spec, pair_column="text")


def test_predictions_do_not_depend_on_batching(tiny_classifier):
    """predict_proba sorts rows by length and pads each batch to its longest: every batch
    size gives the probabilities of one row at a time."""
    out, _ = tiny_classifier
    model, task = load_classifier(out)
    texts = [t for t, _ in labeled_rows(9)] + ["a", "good " * 12, "x y"]
    one = np.concatenate([predict_proba(model, task, [t]) for t in texts])
    np.testing.assert_allclose(predict_proba(model, task, texts, batch_size=4), one,
                               atol=1e-5)


def test_classification_report_values():
    report = classification_report([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], ["a", "b"])
    assert report["accuracy"] == 0.6
    assert report["confusion_matrix"] == [[1, 1], [1, 2]]
    assert report["per_class"]["b"] == {"precision": 0.6667, "recall": 0.6667, "f1": 0.6667,
                                        "support": 3}
    assert report["macro_f1"] == round((0.5 + 2 / 3) / 2, 4)


# -- the classifier --------------------------------------------------------------------------

def test_tiny_set_fitted_to_full_training_accuracy(tiny_classifier):
    out, result = tiny_classifier
    model, task = load_classifier(out)
    rows = labeled_rows()
    probs = predict_proba(model, task, [t for t, _ in rows])
    predicted = [task["class_names"][i] for i in probs.argmax(1)]
    assert predicted == [y for _, y in rows]
    assert result["val_accuracy"] == 1.0


def test_label_mapping_and_keras_round_trip(tiny_classifier, tmp_path):
    out, _ = tiny_classifier
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["objective"] == "classify"
    assert config["task"]["class_names"] == ["neg", "pos"]
    model, task = load_classifier(out)
    assert model.class_names == ["neg", "pos"]
    path = str(tmp_path / "clf.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    assert again.class_names == ["neg", "pos"]
    ids = np.array([[2, 5, 6, 7, 0, 0]], "int32")
    np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(again(ids)))


def test_evaluate_unknown_labels_and_wrong_run(tiny_classifier, tmp_path, tiny_run):
    out, _ = tiny_classifier
    spec = write_tsv(tmp_path / "other.tsv", labeled_rows(6) + [("meh", "neutral")])
    with pytest.raises(DataError, match="labels the model never saw: 'neutral'"):
        evaluate_classifier(out, spec)
    with pytest.raises(RunDirError, match="'classify' run"):
        finetune(str(tmp_path / "x"), spec, run=out)
    with pytest.raises(RunDirError, match="not a classifier run"):
        load_classifier(tiny_run)


def test_cli_evaluate_and_classify(tiny_classifier, labeled_tsv):
    out, _ = tiny_classifier
    proc = call_cli(["evaluate", "--run", out])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[1] == "accuracy: 1.0000" and "confusion matrix" in proc.stdout
    metrics = json.loads(lines[-1])
    assert metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["rows"] == 6
    proc = call_cli(["classify", "--run", out, "--text", "a superb and lovely film",
                    "--text", "a dull and awful film"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = [line.split("\t") for line in proc.stdout.strip().splitlines()]
    assert [g[0] for g in got] == ["pos", "neg"] and all(float(g[1]) > 0.5 for g in got)
    bad = call_cli(["finetune", "--data", labeled_tsv, "--out", out + "-x"])
    assert bad.returncode == 2 and "--from-scratch" in bad.stderr
