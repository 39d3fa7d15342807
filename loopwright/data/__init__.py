"""Production log -> validated, screened, curated training data (issue 6, stages 1-3).

Stages, each a plain function over a data folder (see :mod:`loopwright.data.tables`):

1. :func:`loopwright.data.ingest.ingest` - log objects -> a staged batch (deduped, joined).
2. :func:`loopwright.data.contracts.validate_batch` - Great Expectations contracts.
3. :func:`loopwright.data.screening.screen_batch` - injection / PII / poisoning screening.
4. :func:`loopwright.data.batches.commit_batch` - the batch joins the curated tables.
5. :func:`loopwright.data.curate.curate` - SFT rows, preference pairs, regression cases.

A batch that fails 2 or 3 is rejected whole into the quarantine table and can never be
committed, so it never reaches training data.
"""
