#!/usr/bin/env bash
# Create the compose secrets (PostgreSQL password, Fernet key, JWT and API secrets) once, as
# files under ./secrets next to compose.yaml. Existing files are kept, so re-running is safe.
# The values never leave this host: they are not in git, the CloudFormation template, user data
# or an env file. Usage: init-secrets.sh [DIR]  (DIR defaults to this script's folder).
set -euo pipefail

dir="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}/secrets"
umask 077
mkdir -p "$dir"
chmod 0700 "$dir"

new_secret() {
  local name="$1" value="$2"
  if [[ ! -s "$dir/$name" ]]; then
    printf '%s' "$value" >"$dir/$name"
  fi
  # Readable inside the containers (postgres runs as uid 999, Airflow as 50000); the 0700
  # folder keeps other host users out.
  chmod 0444 "$dir/$name"
}

new_secret postgres_password "$(openssl rand -hex 24)"
new_secret airflow_fernet_key "$(openssl rand -base64 32 | tr '+/' '-_')"
new_secret airflow_jwt_secret "$(openssl rand -hex 32)"
new_secret airflow_api_secret_key "$(openssl rand -hex 32)"
mkdir -p "$(dirname "$dir")/dags" "$(dirname "$dir")/pipelines"
echo "secrets ready in $dir"
