"""Curation filters on the real benchmark data in the local mirror."""

from __future__ import annotations

import pandas as pd

from r1core import curation, data


def test_ngram_decontamination_finds_gsm8k_train_test_overlap(data_dir, capsys):
    train = data.load("gsm8k:train")[0]
    test = data.load("gsm8k:test")[0]
    hits = curation.contaminated(list(train["problem"]), list(test["problem"]), n=8)
    exact = len({p.strip().lower() for p in train["problem"]} & {p.strip().lower() for p in test["problem"]})
    n_hits = sum(hits)
    with capsys.disabled():
        print(f"\nGSM8K train problems sharing an 8-gram with GSM8K test: {n_hits} of {len(train)} "
              f"(exact duplicates: {exact})")
    assert n_hits > exact          # n-grams catch near-duplicates that exact matching misses
    assert n_hits < len(train) * 0.5


def test_ngrams_normalise_case_and_punctuation():
    a = "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May."
    b = "NATALIA sold clips to 48 of her friends in April -- and then she sold"
    assert curation.contaminated([b], [a], n=8) == [True]
    assert curation.contaminated(["A completely different question about trains."], [a], n=8) == [False]


def test_unparsable_gold_answers_are_found():
    rows = pd.DataFrame({"answer": ["42", "\\frac{1}{2}", "", "(1, 2)", "Evelyn", ""],
                         "answer_type": ["math"] * 5 + ["string"]})
    assert curation.parsable_gold(rows) == [True, True, False, True, True, False]


def test_stratified_sample_spreads_across_subjects(data_dir):
    df = data.load("math500")[0].to_pandas()
    picked = curation.stratified_sample(df, "subject", 70, seed=0)
    counts = picked["subject"].value_counts()
    assert len(picked) == 70 and counts.nunique() == 1 and len(counts) == 7   # 7 subjects x 10
    small = pd.DataFrame({"s": ["a"] * 5 + ["b"]})
    assert sorted(curation.stratified_sample(small, "s", 4, seed=0)["s"]) == ["a", "a", "a", "b"]


def test_pass_rate_band_is_a_column_of_the_curated_set(tiny_model_dir, data_dir):
    from mlflow.tracking import MlflowClient

    from r1core import stages, tracking
    from r1core.config import recipe_from_dict

    recipe = recipe_from_dict({"name": "passrate", "model": str(tiny_model_dir), "stages": {"curate": {
        "dataset": "gsm8k:test", "num_problems": 3, "decontaminate": [], "stratify_by": "source",
        "pass_rate": {"num_samples": 2, "candidates": 4, "max_new_tokens": 4, "min_pass_rate": 0.0,
                      "max_pass_rate": 1.0}}}})
    parent = stages.start_pipeline(recipe)
    out = stages.run_stage(recipe, "curate", parent, reference_model=str(tiny_model_dir))
    rows = tracking.read_dataset(out["dataset_uri"])
    assert len(rows) == 3 and "pass_rate" in rows and rows["pass_rate"].between(0, 1).all()
    metrics = MlflowClient().get_run(out["run_id"]).data.metrics
    assert metrics["pass_rate/candidates"] == 4 and metrics["pass_rate/kept"] == 4
