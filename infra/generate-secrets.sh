#!/bin/sh
# Generates every secret the timer mesh needs, into one directory (default infra/secrets, which
# git ignores), for infra/docker-compose.yml and for the Kubernetes Secrets (infra/README.md):
#
#   nats.env                NATS_TIMER_PASSWORD ... NATS_OPERATOR_PASSWORD: the nats-server's
#                           environment, which infra/nats/nats.conf reads its users' passwords from
#   timer.env, dispatcher.env, admin.env
#                           each service's own NATS user and password (the dispatcher's tenant
#                           callback user too) and DATABASE_URL, for compose
#   postgres-password       the Postgres password (compose's postgres service)
#   grafana-admin-password  Grafana's admin password (compose)
#   auth-tokens.json        the token file every service reads (AUTH_TOKENS_FILE): only SHA-256
#                           hashes, of the two tokens below
#   operator-token          an admin token for people and tools (grpcurl -H "authorization: Bearer ...")
#   dispatcher-token        the admin service's own token for its calls to dispatchers
#                           (DISPATCHER_TOKEN_FILE)
#
# Usage: infra/generate-secrets.sh [directory]
# It never overwrites: remove the directory first to start over (and restart everything).
set -eu
umask 077

dir=${1:-$(dirname "$0")/secrets}
if [ -e "$dir/auth-tokens.json" ] || [ -e "$dir/nats.env" ]; then
  echo "generate-secrets: $dir already holds secrets; remove it first to make new ones" >&2
  exit 1
fi
mkdir -p "$dir"

# 32 random bytes as 64 hex digits: safe in URLs, env files and nats.conf alike.
random() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }
sha256() {
  if command -v sha256sum >/dev/null 2>&1; then printf %s "$1" | sha256sum | cut -d' ' -f1
  else printf %s "$1" | shasum -a 256 | cut -d' ' -f1; fi
}

# NATS passwords start with a letter: nats-server parses a substituted $VAR as a config value,
# and one that starts with a digit ("1e5...") is read as a number and stops the server.
nats_password() { printf 'nats_%s' "$(random)"; }
timer_pw=$(nats_password); dispatcher_pw=$(nats_password); admin_pw=$(nats_password); callbacks_pw=$(nats_password); operator_pw=$(nats_password)
postgres_pw=$(random)
operator_token="tm_$(random)"
dispatcher_token="tm_$(random)"
database_url="postgres://timer:$postgres_pw@postgres:5432/timers"

cat >"$dir/nats.env" <<EOF
NATS_TIMER_PASSWORD=$timer_pw
NATS_DISPATCHER_PASSWORD=$dispatcher_pw
NATS_ADMIN_PASSWORD=$admin_pw
NATS_CALLBACKS_PASSWORD=$callbacks_pw
NATS_OPERATOR_PASSWORD=$operator_pw
EOF
cat >"$dir/timer.env" <<EOF
NATS_USER=timer
NATS_PASSWORD=$timer_pw
DATABASE_URL=$database_url
EOF
cat >"$dir/dispatcher.env" <<EOF
NATS_USER=dispatcher
NATS_PASSWORD=$dispatcher_pw
CALLBACK_NATS_USER=callbacks
CALLBACK_NATS_PASSWORD=$callbacks_pw
DATABASE_URL=$database_url
EOF
cat >"$dir/admin.env" <<EOF
NATS_USER=admin
NATS_PASSWORD=$admin_pw
DATABASE_URL=$database_url
EOF
printf %s "$postgres_pw" >"$dir/postgres-password"
printf %s "$(random)" >"$dir/grafana-admin-password"
printf %s "$operator_token" >"$dir/operator-token"
printf %s "$dispatcher_token" >"$dir/dispatcher-token"
cat >"$dir/auth-tokens.json" <<EOF
[
  {"name": "operator", "sha256": "$(sha256 "$operator_token")", "admin": true},
  {"name": "admin-service", "sha256": "$(sha256 "$dispatcher_token")", "admin": true}
]
EOF
# Files Docker bind-mounts as secrets must be readable by the containers' users (node: uid
# 1000, grafana: 472, postgres reads as root); the directory itself stays private to you.
chmod 700 "$dir"
chmod 644 "$dir/auth-tokens.json" "$dir/dispatcher-token" "$dir/postgres-password" "$dir/grafana-admin-password"

echo "generate-secrets: wrote $dir"
echo "  admin token for grpcurl/buf curl: $dir/operator-token"
echo "  NATS operator (full rights):      nats://operator:<NATS_OPERATOR_PASSWORD in $dir/nats.env>@127.0.0.1:4222"
