"""WikiSQL logical-form and execution accuracy on hand-built tables."""

from lora_jax.metrics.wikisql import (
    Query,
    parse_query,
    query_from_hub,
    query_to_text,
    wikisql_scores,
)

TABLE = {
    "header": ["Player", "No.", "Position", "Years"],
    "types": ["text", "real", "text", "text"],
    "rows": [
        ["Mark O'Brien", "5", "Guard", "1995"],
        ["Tim Duncan", "21", "Forward", "2000"],
        ["Joe Smith", "5", "Forward", "1999"],
    ],
}
GOLD = query_from_hub(
    {
        "sel": 0,
        "agg": 0,
        "conds": {"column_index": [1, 2], "operator_index": [0, 0], "condition": ["5", "Guard"]},
    }
)


def test_text_roundtrip_with_quotes():
    q = Query(0, 3, ((0, 0, "Mark O'Brien"), (1, 1, "4")))
    text = query_to_text(q, TABLE["header"])
    assert (
        text
        == """SELECT COUNT("Player") FROM table WHERE "Player" = 'Mark O''Brien' AND "No." > '4'"""
    )
    assert parse_query(text, TABLE["header"]) == q


def test_gold_scores_one():
    assert wikisql_scores([query_to_text(GOLD, TABLE["header"])], [GOLD], [TABLE]) == {
        "lf_acc": 1.0,
        "ex_acc": 1.0,
    }


def test_reordered_conditions_and_case_count_for_both():
    pred = """SELECT "Player" FROM table WHERE "position" = 'GUARD' AND "No." = '5'"""
    assert wikisql_scores([pred], [GOLD], [TABLE]) == {"lf_acc": 1.0, "ex_acc": 1.0}


def test_equivalent_number_spelling_executes_equal_but_is_another_logical_form():
    pred = """SELECT "Player" FROM table WHERE "No." = '5.0' AND "Position" = 'Guard'"""
    assert wikisql_scores([pred], [GOLD], [TABLE]) == {"lf_acc": 0.0, "ex_acc": 1.0}


def test_wrong_and_unparsable_predictions_are_wrong_not_errors():
    preds = [
        """SELECT "Player" FROM table WHERE "No." = '5'""",  # 2 rows instead of 1
        "SELECT Player FROM table",  # unquoted column: not our format
        """SELECT "Height" FROM table""",  # unknown column
        """SELECT MAX("Player") FROM table WHERE "No." = 'abc'""",  # non-numeric value
        "",
    ]
    out = wikisql_scores(preds, [GOLD] * 5, [TABLE] * 5)
    assert out == {"lf_acc": 0.0, "ex_acc": 0.0}


def test_aggregation_executes_on_numbers():
    gold = Query(1, 4, ((2, 0, "forward"),))  # SUM(No.) WHERE Position = forward -> 26
    pred = """SELECT SUM("No.") FROM table WHERE "Position" = 'Forward'"""
    assert wikisql_scores([pred], [gold], [TABLE])["ex_acc"] == 1.0
    wrong = """SELECT MAX("No.") FROM table WHERE "Position" = 'Forward'"""
    assert wikisql_scores([wrong], [gold], [TABLE])["ex_acc"] == 0.0
