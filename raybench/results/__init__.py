"""Results of a study: the Parquet results store, the report (Table 2, curves, cost), W&B Report.

Import the submodules (``raybench.results.store``, ``.report``, ``.wandb_report``); this
package itself imports nothing heavy, so ``raybench --help`` stays fast.
"""
