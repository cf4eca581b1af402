"""fit()'s final metrics: taken from the last epoch's evaluation when it evaluated the trained model (no second
evaluation of the same model), evaluated and logged when the schedule's last row has none."""
import json

from mtl_ops.train import Trainer
from train_helpers import one_thread, tiny_config  # noqa: F401


def counting_evaluations(trainer):
    calls = []
    evaluate = trainer.evaluate
    trainer.evaluate = lambda *a, **k: calls.append(1) or evaluate(*a, **k)
    return calls


def test_plain_epochs_evaluate_the_final_model_once(tmp_path):
    trainer = Trainer(tiny_config(tasks=("semseg", "depth"), epochs=2, out_dir=str(tmp_path)))
    calls = counting_evaluations(trainer)
    result = trainer.fit()
    assert len(calls) == 2  # one per epoch, none after
    assert result == trainer.history[-1]["val"] == Trainer.evaluate(trainer)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["train", "train"]


def test_final_metrics_are_evaluated_and_logged_when_the_schedule_did_not(tmp_path):
    """PDF's phases train without evaluating: the final model is evaluated once, and the row logged."""
    trainer = Trainer(tiny_config(method="pdf", tasks=("semseg", "depth"), out_dir=str(tmp_path),
                                  schedule_options={"threshold": -1.0, "cka_images": 8, "max_fusions": 1}))
    calls = counting_evaluations(trainer)
    result = trainer.fit()
    assert len(calls) == 1
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last == {"phase": "evaluation", "epoch": trainer.epoch, "step": trainer.step, "val": result}
