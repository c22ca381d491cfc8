#!/usr/bin/env bash
# Spark 4 needs Java 17 or 21. Say so in one line, with the fix, when it is missing.
set -euo pipefail
if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then java="$JAVA_HOME/bin/java"; else java=$(command -v java || true); fi
if [[ -z "$java" ]]; then
  echo "raw2gold: Java not found; Spark 4 needs Java 17 or 21 (fix: sudo apt-get install -y openjdk-17-jre-headless, or set JAVA_HOME)" >&2
  exit 1
fi
# "17.0.15" -> 17; the old scheme "1.8.0_392" -> 8.
version=$("$java" -version 2>&1 | sed -n 's/.*version "\(1\.\)\{0,1\}\([0-9]*\).*/\2/p' | head -1)
if [[ "$version" != "17" && "$version" != "21" ]]; then
  echo "raw2gold: Java $version found at $java; Spark 4 needs Java 17 or 21 (fix: install openjdk-17-jre-headless and set JAVA_HOME)" >&2
  exit 1
fi
