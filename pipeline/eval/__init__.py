"""tansaku.pipeline.eval: measuring retrieval and reranking quality.

- :mod:`.metrics`: nDCG, MRR, recall, MAP, P at k through trec_eval (pytrec_eval);
- :mod:`.trec`: TREC queries, qrels and run files;
- :mod:`.datasets`: JSQuAD and JQaRA-style evaluation data;
- :mod:`.evaluation`: per-stage evaluation of a pipeline and paired significance tests;
- :mod:`.fusion_tuning`: choosing the first-stage/reranker fusion weight on judged queries.
"""
