"""Serving: the one inference path (`Recommender`), batch recommendations and the HTTP service."""

from slmrec.serve.recommender import ANONYMOUS, Answer, EmptyHistory, Query, Recommender, UnknownUser

__all__ = ["ANONYMOUS", "Answer", "EmptyHistory", "Query", "Recommender", "UnknownUser"]
