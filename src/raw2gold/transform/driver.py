"""Entry point that spark-submit runs: the same stage job as ``python -m raw2gold.transform.job``.

spark-submit needs a file (not a module) as the application; this file is shipped inside the
package so local, cluster and ssh deployments run the same code path.
"""

from __future__ import annotations

from raw2gold.process_exit import exit_now
from raw2gold.transform.job import main

if __name__ == "__main__":
    exit_now(main())
