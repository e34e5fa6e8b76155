"""The laboratory: experiments that check the framework's claims on trained in-context learners
and on real language models, each a function returning a :class:`Section` for the report."""

from icldistill.lab.experiments._common import (
           Check,
           Section,
           Table,
           checks_summary,
           demo_key_values,
           icl_head_decomposition,
           query_token,
)

__all__ = ["Check", "Section", "Table", "checks_summary", "demo_key_values",
           "icl_head_decomposition", "query_token"]
