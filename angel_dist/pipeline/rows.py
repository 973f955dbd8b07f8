"""The names of the final table's rows (run.json's `final-eval` stage, report.md), in reading order.

run.json stores the rows sorted by name; report.md and `angel run` print them in ROW_ORDER.
"""

POSITIVE = "positive-only"
MATCHED = "positive-only + NLL (matched steps)"
ANGEL = "angel"
TFIDF = "char TF-IDF nearest name"
ROW_ORDER = (POSITIVE, MATCHED, ANGEL, TFIDF)
