#!/usr/bin/env bash
# Deploy the Power BI embed-token function to Azure with the az CLI: a Flex Consumption
# app (Python 3.13 unless --python says otherwise, system-assigned identity), its secrets
# in a Key Vault that uses RBAC, platform CORS for the given origins, and the code deployed
# with a remote build; with --federated, a user-assigned identity the app registration
# trusts instead of a secret.
#
# Safe to run again, and a re-run converges: every resource is looked up before it is
# created, a role is granted only when missing, and the function's own settings (POWERBI_*)
# that a run does not set are removed from the app. No secret is ever put on a command line
# (where `ps` and shell history would show it): each goes to Key Vault through a 0600 file
# that is deleted afterwards, and the app reads it through a Key Vault reference.
#
# One function per concern (create_app, create_vault, create_redis, create_federated_identity,
# configure_app, remove_stale_settings, configure_cors...), called in order from main.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
# Python on Flex Consumption: 3.10 to 3.14 there (3.13 and 3.14 only there); the suite runs
# on 3.11 and 3.13 (.ci/run). --python picks the version of a new app.
readonly PYTHON_VERSIONS=(3.11 3.12 3.13 3.14)
RUNTIME_VERSION=3.13
# The settings that are secrets (as in shared/settings.py); every other POWERBI_* variable
# set here becomes a plain app setting.
readonly SECRET_SETTINGS=(POWERBI_PASSWORD POWERBI_CLIENT_SECRET POWERBI_CLIENT_CERTIFICATE POWERBI_CACHE_URL POWERBI_CACHE_ENCRYPTION_KEY)
# The local emulator's port (make demo): a URL with it points at this machine, never at Azure.
readonly EMULATOR_PORT=8443
DRY_RUN=false
DOCTOR=false
REDIS=false
CUSTOMERS=false
FEDERATED=false
# Entra ID's sign-in host and the token-exchange audience of each Power BI cloud (POWERBI_CLOUD),
# as Microsoft documents them for federated identity credentials: set by federated_cloud.
FEDERATED_HOST=login.microsoftonline.com
FEDERATED_AUDIENCE=api://AzureADTokenExchange
# What --federated sets instead of a client secret (create_federated_identity).
FEDERATED_SETTINGS=()
# What --customers sets beside its POWERBI_* settings: the table connection (create_customers_table).
CUSTOMERS_SETTINGS=()
FEDERATED_PRINCIPAL=''
TELEMETRY=false
# Worker threads for the function's synchronous handlers: its work is waiting on Power BI, so
# more threads than the default min(32, CPUs + 4) (6 on 2 cores); 32 is the most the Python
# worker allows. Measured: benchmarks/bench_fleet.py, docs/architecture.md "The thread pool".
readonly THREAD_COUNT=32

usage() {
  cat <<'EOF'
Usage: deploy/deploy.sh [--dry-run] [--doctor] [--redis] [--customers] [--federated] [--telemetry]
                        [--python 3.11|3.12|3.13|3.14]
                        [--resource-group NAME] [--location REGION] [--app-name NAME]
                        [--cors-origins LIST] [--key-vault-name NAME] [--storage-account NAME]

Creates or reuses, in this order: the resource group, a storage account, a Flex Consumption
function app (Python 3.13 by default, system-assigned identity), a Key Vault with RBAC (the app
may read its secrets, you may write them); stores the secrets; sets the app settings (secrets
as Key Vault references) and removes the function's own settings (POWERBI_*) this run does not
set; sets CORS; deploys the code with a remote build. Sign in first: az login.

Inputs are environment variables (the flags above set the first six):
  RESOURCE_GROUP      resource group, created if missing
  LOCATION            Azure region with Flex Consumption (az functionapp list-flexconsumption-locations)
  APP_NAME            function app name, globally unique: <APP_NAME>.azurewebsites.net
  CORS_ORIGINS        comma-separated origins of the sites that call the function,
                      e.g. https://www.contoso.com,https://contoso.github.io
                      ('*' only together with ALLOW_ANY_ORIGIN=true)
  KEY_VAULT_NAME      optional; default <APP_NAME>-kv (3-24 letters, digits, hyphens)
  STORAGE_ACCOUNT     optional; default <app name letters and digits>st (3-24 lowercase, digits)
  POWERBI_*           the function's settings (docs/settings.md): each one set becomes an app
                      setting; a POWERBI_* app setting this run does not set is removed
                      (the script names it), so the app has exactly this run's settings.
                      Other app settings are never touched. Skipped, with a note: a name
                      the function does not read, a ..._PATH (a file here; a certificate
                      file goes to Key Vault instead), a loopback or emulator URL
                      (localhost, 127.0.0.1, port 8443), and a secret the mode does not use.
                      POWERBI_RLS_USERNAME_SOURCE=principal also turns on CORS credentials.
Secrets, stored in Key Vault, never as plain app settings:
  POWERBI_PASSWORD            MasterUser mode: required
  POWERBI_CLIENT_SECRET       ServicePrincipal mode: required unless a certificate is given
  POWERBI_CLIENT_CERTIFICATE  optional (PEM with its private key)
  POWERBI_CACHE_URL, POWERBI_CACHE_ENCRYPTION_KEY  the shared cache, in every mode (or --redis)
  ManagedIdentity mode, and ServicePrincipal mode with --federated, have no secret of their
  own: a Key Vault is made only for the cache settings.
  A required secret missing from the environment is asked for (hidden) when a terminal is
  attached; without one (a pipeline) the script stops instead.

Options:
  --dry-run   print every az command instead of running it; needs no secret and no sign-in
  --doctor    afterwards, check the deployed settings from here with python -m shared.doctor
              (needs the function's requirements installed)
  --python V  the Python version of a new app: 3.11, 3.12, 3.13 (default) or 3.14 (an existing
              app keeps its version). The suite runs on 3.11 and 3.13.
  --federated no secret to rotate (ServicePrincipal, or MasterUser with a confidential client):
              a user-assigned identity (IDENTITY_NAME, default <APP_NAME>-signin) created or
              reused and assigned to the app, and a federated identity credential on the app
              registration POWERBI_CLIENT_ID that trusts it (issuer
              https://login.microsoftonline.com/<tenant>/v2.0, or the cloud's, subject the
              identity's principal id, audience api://AzureADTokenExchange, or the cloud's).
              Sets POWERBI_CLIENT_ASSERTION=managed_identity and
              POWERBI_MANAGED_IDENTITY_CLIENT_ID; stores no client secret or certificate.
              Needs permission to change the app registration (its owner, or Application
              Administrator).
  --redis     also a shared cache for all instances: an Azure Managed Redis with Entra ID
              authentication only (REDIS_NAME, default <APP_NAME>-redis; REDIS_SKU, default
              Balanced_B0), an access policy assignment for the app's identity, a generated
              encryption key in Key Vault, and POWERBI_CACHE_URL and
              POWERBI_CACHE_ENCRYPTION_KEY as Key Vault references. Without it, no Redis
              setting or resource is touched.
  --customers many customers, with the directory in a table: creates the table
              POWERBI_CUSTOMERS_TABLE (default customers) in the function app's storage
              account, gives the app's identity 'Storage Table Data Reader' on it (and you
              'Storage Table Data Contributor', for python -m shared.customers), and sets
              POWERBI_CUSTOMERS_SOURCE=table, POWERBI_CUSTOMERS_TABLE,
              POWERBI_CUSTOMERS_CONNECTION=CustomersStorage and
              CustomersStorage__tableServiceUri (reached with the app's identity: no key).
              Needs POWERBI_CUSTOMER_FROM; POWERBI_WORKSPACE_ID, POWERBI_ALLOWED_WORKSPACES,
              POWERBI_ALLOWED_REPORTS, POWERBI_ALLOWED_DASHBOARDS and POWERBI_PROFILE_ID must
              be unset (each customer brings its own) and are removed from the app.
  --telemetry also OpenTelemetry to Application Insights: a Log Analytics workspace
              (LOG_WORKSPACE_NAME, default <APP_NAME>-logs) and a workspace-based Application
              Insights (APP_INSIGHTS_NAME, default <APP_NAME>-insights; an existing one of that
              name in the resource group is used as it is), its connection string and the host's
              OpenTelemetry mode as app settings, and the workbook deploy/workbook.json on it.
              Needs the CLI's application-insights extension (az extension add -n application-insights).
  -h, --help  this text
EOF
}

die() {
  printf 'deploy: %s\n' "$*" >&2
  exit 1
}
say() { printf '==> %s\n' "$*"; }

# Dry-run output goes to fd 3 (the real stdout) so it shows even inside $(...).
exec 3>&1
show_command() {
  printf '+' >&3
  printf ' %q' "$@" >&3
  printf '\n' >&3
}

# A call that changes something: printed instead in a dry run.
az_do() {
  if $DRY_RUN; then show_command az "$@"; else az "$@"; fi
}

# `az_get PLACEHOLDER ARGS...`: a read whose output the script needs; a dry run prints it
# and answers PLACEHOLDER.
az_get() {
  local placeholder=$1
  shift
  if $DRY_RUN; then
    show_command az "$@"
    printf '%s\n' "$placeholder"
  else
    az "$@"
  fi
}

# `exists ARGS...` runs `az ARGS --output none`: true if found, false if Azure says it is
# not found. Any other failure (signed out, no permission, network) stops the script
# rather than being taken for "missing" and followed by a create.
exists() {
  if $DRY_RUN; then
    show_command az "$@" --output none
    return 1 # a dry run shows the full plan, as for a first deployment
  fi
  local error
  if error=$(az "$@" --output none 2>&1 >/dev/null); then return 0; fi
  case $error in
  *NotFound* | *"not found"* | *"could not be found"*) return 1 ;;
  esac
  printf '%s\n' "$error" >&2
  die "could not check whether it exists: az $*"
}

# `ensure WHAT SHOW-ARGS... -- CREATE-ARGS...`: create only what is missing.
ensure() {
  local what=$1 show=()
  shift
  while [[ $1 != -- ]]; do
    show+=("$1")
    shift
  done
  shift
  if exists "${show[@]}"; then
    say "$what: exists, reused"
  else
    az_do "$@" --output none
    say "$what: created"
  fi
}

# Fresh role assignments and identities take a while to reach Key Vault and Microsoft
# Entra ID: retry a few times before giving up (RETRY_SECONDS between tries).
with_retries() {
  local attempt
  for attempt in 1 2 3 4 5 6; do
    if "$@"; then return 0; fi
    printf 'deploy: attempt %s failed; Azure may still be propagating a new role or identity\n' "$attempt" >&2
    sleep "${RETRY_SECONDS:-10}"
  done
  return 1
}

parse_args() {
  while (($#)); do
    case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    --dry-run) DRY_RUN=true ;;
    --doctor) DOCTOR=true ;;
    --redis) REDIS=true ;;
    --customers) CUSTOMERS=true ;;
    --telemetry) TELEMETRY=true ;;
    --federated) FEDERATED=true ;;
    --python)
      (($# >= 2)) || die "$1 needs a value"
      RUNTIME_VERSION=$2
      shift
      ;;
    --resource-group | --location | --app-name | --cors-origins | --key-vault-name | --storage-account)
      (($# >= 2)) || die "$1 needs a value"
      local variable=${1#--}
      variable=${variable//-/_}
      printf -v "${variable^^}" '%s' "$2"
      shift
      ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
  done
}

check_inputs() {
  local missing=() required name
  AUTH_MODE=${POWERBI_AUTH_MODE:-MasterUser}
  POWERBI_AUTH_MODE=$AUTH_MODE
  case $AUTH_MODE in
  MasterUser) required=(POWERBI_CLIENT_ID POWERBI_USERNAME) ;;
  ServicePrincipal) required=(POWERBI_CLIENT_ID POWERBI_TENANT_ID) ;;
  ManagedIdentity) required=() ;;
  *) die "POWERBI_AUTH_MODE must be MasterUser, ServicePrincipal or ManagedIdentity" ;;
  esac
  for name in RESOURCE_GROUP LOCATION APP_NAME CORS_ORIGINS "${required[@]}"; do
    [[ -n ${!name:-} ]] || missing+=("$name")
  done
  $CUSTOMERS || [[ -n ${POWERBI_WORKSPACE_ID:-}${POWERBI_ALLOWED_WORKSPACES:-} ]] || missing+=("POWERBI_WORKSPACE_ID")
  ((${#missing[@]} == 0)) || die "missing: ${missing[*]} (see --help)"
  [[ " ${PYTHON_VERSIONS[*]} " == *" $RUNTIME_VERSION "* ]] ||
    die "--python must be one of ${PYTHON_VERSIONS[*]} (Flex Consumption's), not '$RUNTIME_VERSION'"
  if $FEDERATED; then
    [[ $AUTH_MODE != ManagedIdentity ]] ||
      die "--federated is for ServicePrincipal and MasterUser modes: ManagedIdentity mode already signs in as the app's identity"
    federated_cloud
  fi
  [[ $APP_NAME =~ ^[A-Za-z0-9][A-Za-z0-9-]{0,58}[A-Za-z0-9]$ ]] ||
    die "APP_NAME must be 2-60 letters, digits and hyphens, not starting or ending with a hyphen"
}

# Default names follow Azure's rules: storage 3-24 lowercase letters and digits; Key
# Vault 3-24 letters, digits and hyphens, starting with a letter, no double hyphen.
derive_names() {
  local base=${APP_NAME,,} vault
  if [[ -z ${STORAGE_ACCOUNT:-} ]]; then
    base=${base//[^a-z0-9]/}
    STORAGE_ACCOUNT="${base:0:22}st"
  fi
  [[ $STORAGE_ACCOUNT =~ ^[a-z0-9]{3,24}$ ]] ||
    die "STORAGE_ACCOUNT '$STORAGE_ACCOUNT' must be 3-24 lowercase letters and digits"
  if [[ -z ${KEY_VAULT_NAME:-} ]]; then
    vault=${APP_NAME,,}
    while [[ $vault == *--* ]]; do vault=${vault//--/-}; done
    [[ $vault =~ ^[a-z] ]] || vault="kv-$vault"
    vault=${vault:0:21}
    KEY_VAULT_NAME="${vault%-}-kv"
  fi
  [[ $KEY_VAULT_NAME =~ ^[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]$ && $KEY_VAULT_NAME != *--* ]] ||
    die "KEY_VAULT_NAME '$KEY_VAULT_NAME' must be 3-24 letters, digits and single hyphens, starting with a letter"
}

# Row-level security from the signed-in user (App Service Authentication's principal)?
rls_from_principal() {
  local source=${POWERBI_RLS_USERNAME_SOURCE:-none}
  [[ ${source,,} == principal ]]
}

# Browsers send an Origin of scheme://host[:port]; anything else would never match.
parse_origins() {
  local raw origin
  IFS=',' read -ra raw <<<"$CORS_ORIGINS"
  ORIGINS=()
  for origin in "${raw[@]}"; do
    origin=${origin//[[:space:]]/}
    origin=${origin%/}
    [[ -n $origin ]] || continue
    if [[ $origin == '*' ]]; then
      [[ ${ALLOW_ANY_ORIGIN:-false} == true ]] ||
        die "CORS_ORIGINS='*' lets every website call the function; set ALLOW_ANY_ORIGIN=true if that is really meant"
      ! rls_from_principal ||
        die "CORS_ORIGINS='*' cannot carry the sign-in cookie POWERBI_RLS_USERNAME_SOURCE=principal needs: name the origins"
    elif [[ ! $origin =~ ^https?://[A-Za-z0-9.-]+(:[0-9]+)?$ ]]; then
      die "CORS_ORIGINS: '$origin' is not an origin (scheme://host[:port], no path), e.g. https://www.contoso.com"
    fi
    ORIGINS+=("$origin")
  done
  ((${#ORIGINS[@]})) || die "CORS_ORIGINS names no origin"
}

# The secrets this run stores (SECRETS), asking for a required one if missing; a secret given
# that this run does not use is named, with the reason, and not stored.
collect_secrets() {
  local name value why needed=()
  case $AUTH_MODE in
  MasterUser) needed=(POWERBI_PASSWORD) ;;
  ServicePrincipal)
    # A certificate, or an assertion (--federated, or an identity you set up yourself), replaces the secret.
    $FEDERATED || [[ -n ${POWERBI_CLIENT_CERTIFICATE:-}${POWERBI_CLIENT_CERTIFICATE_PATH:-}${POWERBI_CLIENT_ASSERTION:-} ]] ||
      needed=(POWERBI_CLIENT_SECRET)
    ;;
  esac
  SECRETS=("${needed[@]}")
  for name in "${SECRET_SETTINGS[@]}"; do
    [[ -n ${!name:-} && " ${needed[*]} " != *" $name "* ]] || continue
    why=$(unused_secret "$name")
    if [[ -n $why ]]; then
      say "skipped $name: $why"
      continue
    fi
    SECRETS+=("$name")
  done
  for name in "${needed[@]}"; do
    [[ -z ${!name:-} ]] || continue
    $DRY_RUN && continue # a dry run stores nothing
    [[ -t 0 ]] || die "$name is not set and no terminal is attached to ask for it: export $name (from your pipeline's secret store) and run again"
    read -rsp "$name (typing is hidden): " value
    printf '\n' >&2
    [[ -n $value ]] || die "$name is required in $AUTH_MODE mode"
    printf -v "$name" '%s' "$value"
  done
  # Keep the values in this shell only: no az process inherits them in its environment.
  export -n "${SECRET_SETTINGS[@]}"
}

# Why a secret given here is not stored in this run, or nothing if it is.
unused_secret() {
  case $1 in
  POWERBI_PASSWORD)
    [[ $AUTH_MODE == MasterUser ]] || printf 'only MasterUser mode signs in with a password (this is %s mode)' "$AUTH_MODE"
    ;;
  POWERBI_CLIENT_SECRET | POWERBI_CLIENT_CERTIFICATE)
    if [[ $AUTH_MODE == ManagedIdentity ]]; then
      printf "ManagedIdentity mode signs in as the app's identity, with no client credential"
    elif $FEDERATED; then
      printf -- "--federated signs in with the managed identity's token instead of a secret or certificate"
    fi
    ;;
  POWERBI_CACHE_URL | POWERBI_CACHE_ENCRYPTION_KEY)
    if $REDIS; then printf -- '--redis makes it and stores it in Key Vault'; fi
    ;;
  esac
  return 0
}

build_package() {
  if $DRY_RUN; then
    say "package: these files would be deployed"
    "${PYTHON:-python3}" "$ROOT/deploy/package.py" --root "$ROOT" --list | sed 's/^/    /'
  else
    "${PYTHON:-python3}" "$ROOT/deploy/package.py" --root "$ROOT" "$WORK/package.zip"
  fi
}

deployer_identity() {
  local kind
  kind=$(az_get user account show --query user.type --output tsv) ||
    die "not signed in to Azure: run 'az login' (and 'az account set --subscription ...') first"
  if [[ $kind == servicePrincipal ]]; then
    DEPLOYER_TYPE=ServicePrincipal
    local app_id
    app_id=$(az_get '<deployer-app-id>' account show --query user.name --output tsv)
    DEPLOYER_ID=$(az_get '<deployer-object-id>' ad sp show --id "$app_id" --query id --output tsv)
  else
    DEPLOYER_TYPE=User
    DEPLOYER_ID=$(az_get '<deployer-object-id>' ad signed-in-user show --query id --output tsv)
  fi
}

create_app() {
  ensure "resource group $RESOURCE_GROUP" group show --name "$RESOURCE_GROUP" -- \
    group create --name "$RESOURCE_GROUP" --location "$LOCATION"
  ensure "storage account $STORAGE_ACCOUNT" storage account show --name "$STORAGE_ACCOUNT" --resource-group "$RESOURCE_GROUP" -- \
    storage account create --name "$STORAGE_ACCOUNT" --resource-group "$RESOURCE_GROUP" --location "$LOCATION" \
    --sku Standard_LRS --kind StorageV2 --allow-blob-public-access false --min-tls-version TLS1_2
  ensure "function app $APP_NAME" functionapp show --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" -- \
    functionapp create --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" --storage-account "$STORAGE_ACCOUNT" \
    --flexconsumption-location "$LOCATION" --runtime python --runtime-version "$RUNTIME_VERSION" --https-only true
  local running
  running=$(az_get "$RUNTIME_VERSION" functionapp show --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" \
    --query functionAppConfig.runtime.version --output tsv)
  if [[ $running != "$RUNTIME_VERSION" ]]; then
    say "function app $APP_NAME runs Python $running: kept (--python $RUNTIME_VERSION applies to a new app)"
  fi
  APP_IDENTITY=$(az_get '' functionapp identity show --name "$APP_NAME" \
    --resource-group "$RESOURCE_GROUP" --query principalId --output tsv)
  if [[ -z $APP_IDENTITY ]]; then
    APP_IDENTITY=$(az_get '<app-principal-id>' functionapp identity assign --name "$APP_NAME" \
      --resource-group "$RESOURCE_GROUP" --identities '[system]' --query principalId --output tsv)
    say "function app identity: assigned"
  fi
}

# The vault, who may use it, and the secrets in it.
create_vault() {
  ensure "key vault $KEY_VAULT_NAME" keyvault show --name "$KEY_VAULT_NAME" --resource-group "$RESOURCE_GROUP" -- \
    keyvault create --name "$KEY_VAULT_NAME" --resource-group "$RESOURCE_GROUP" --location "$LOCATION" \
    --enable-rbac-authorization true
  VAULT_ID=$(az_get '<key-vault-id>' keyvault show --name "$KEY_VAULT_NAME" --resource-group "$RESOURCE_GROUP" \
    --query id --output tsv)
  grant "Key Vault Secrets Officer" "$DEPLOYER_ID" "$DEPLOYER_TYPE" "the deployer (you)"
  grant "Key Vault Secrets User" "$APP_IDENTITY" ServicePrincipal "the function app"
  store_secrets
}

# `grant ROLE OBJECT-ID PRINCIPAL-TYPE WHO`, on the vault, unless already granted there or above.
grant() {
  local role=$1 principal=$2 kind=$3 who=$4 found
  found=$(az_get '' role assignment list --assignee "$principal" --role "$role" --scope "$VAULT_ID" \
    --include-inherited --query '[].id' --output tsv)
  if [[ -n $found ]]; then
    say "$who has '$role': yes"
    return
  fi
  with_retries az_do role assignment create --assignee-object-id "$principal" --assignee-principal-type "$kind" \
    --role "$role" --scope "$VAULT_ID" --output none || die "could not grant '$role' to $who"
  say "$who has '$role': granted"
}

secret_name() {
  local name=${1#POWERBI_}
  name=${name,,}
  printf 'powerbi-%s' "${name//_/-}"
}

# Write each secret to a 0600 file (printf is a shell builtin: the value is on no command
# line), hand the file to az, delete it. The app setting is a reference to the secret.
store_secrets() {
  local name file
  for name in "${SECRETS[@]}"; do
    file="$WORK/$(secret_name "$name")"
    $DRY_RUN || printf '%s' "${!name}" >"$file"
    with_retries az_do keyvault secret set --vault-name "$KEY_VAULT_NAME" --name "$(secret_name "$name")" \
      --file "$file" --encoding utf-8 --output none || die "could not store $name in key vault $KEY_VAULT_NAME"
    rm -f "$file"
    SECRET_REFERENCES+=("$name=@Microsoft.KeyVault(SecretUri=https://$KEY_VAULT_NAME.vault.azure.net/secrets/$(secret_name "$name")/)")
    say "secret $name: stored in $KEY_VAULT_NAME"
  done
}

# The settings the function reads (SETTING_NAMES in shared/settings.py, which imports nothing
# but the standard library): only these become app settings.
read_setting_names() {
  local names
  names=$(PYTHONPATH=$ROOT "${PYTHON:-python3}" -c 'from shared.settings import SETTING_NAMES; print(*SETTING_NAMES)') ||
    die "could not read the setting names from shared/settings.py"
  read -ra SETTING_NAMES <<<"$names"
  ((${#SETTING_NAMES[@]})) || die "shared/settings.py names no setting"
}

# A certificate file on this machine cannot be read in Azure: its PEM goes to Key Vault as
# POWERBI_CLIENT_CERTIFICATE instead, and the path is not set (configure_app skips it).
load_certificate_file() {
  local path=${POWERBI_CLIENT_CERTIFICATE_PATH:-}
  [[ -n $path ]] || return 0
  [[ -z ${POWERBI_CLIENT_CERTIFICATE:-} ]] ||
    die "set POWERBI_CLIENT_CERTIFICATE or POWERBI_CLIENT_CERTIFICATE_PATH, not both"
  [[ -f $path && -r $path ]] || die "POWERBI_CLIENT_CERTIFICATE_PATH names a file that cannot be read"
  POWERBI_CLIENT_CERTIFICATE=$(<"$path")
  say "POWERBI_CLIENT_CERTIFICATE_PATH: a file on this machine; its certificate goes to Key Vault as POWERBI_CLIENT_CERTIFICATE"
}

# Why a value set here cannot work as an app setting in Azure, or nothing if it can.
unusable_in_azure() {
  local name=$1 value=${2,,}
  if $FEDERATED && [[ $name == POWERBI_CLIENT_ASSERTION || $name == POWERBI_MANAGED_IDENTITY_CLIENT_ID ]]; then
    printf -- '--federated sets it (to the identity it assigns), so this value'
  elif [[ " ${SETTING_NAMES[*]} " != *" $name "* ]]; then
    printf 'not a setting of the function'
  elif [[ $name == *_PATH ]]; then
    printf 'a path to a file on this machine'
  elif [[ $value =~ ^[a-z][a-z0-9+.-]*://(localhost|127\.[0-9.]+|\[::1\]|0\.0\.0\.0)([:/]|$) ||
    $value =~ ^[a-z][a-z0-9+.-]*://[^/]*:${EMULATOR_PORT}(/|$) ]]; then
    printf 'a loopback or emulator address'
  fi
}

configure_app() {
  local settings=() name why
  for name in $(compgen -v POWERBI_); do
    [[ -z ${!name:-} || " ${SECRET_SETTINGS[*]} " == *" $name "* ]] && continue
    why=$(unusable_in_azure "$name" "${!name}")
    if [[ -n $why ]]; then
      say "skipped $name: $why cannot work in Azure, so it is not set as an app setting"
      continue
    fi
    settings+=("$name=${!name}")
  done
  settings+=("${FEDERATED_SETTINGS[@]}" "${CUSTOMERS_SETTINGS[@]}" "PYTHON_THREADPOOL_THREAD_COUNT=$THREAD_COUNT")
  # --output none: the command would otherwise print every setting, storage keys included.
  az_do functionapp config appsettings set --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" \
    --settings "${settings[@]}" "${SECRET_REFERENCES[@]}" --output none
  say "app settings: ${#settings[@]} values, ${#SECRET_REFERENCES[@]} Key Vault references"
  remove_stale_settings "${settings[@]}" "${SECRET_REFERENCES[@]}"
}

# `remove_stale_settings NAME=VALUE...`: the function's own settings (POWERBI_*) in Azure that
# this run did not set are removed, so a re-deploy converges: a secret replaced by a
# certificate leaves no POWERBI_CLIENT_SECRET behind (the function refuses both). Settings
# that are not the function's (the platform's, storage, PYTHON_*) are never touched.
remove_stale_settings() {
  local kept=" ${*%%=*} " current name stale=()
  current=$(az_get '' functionapp config appsettings list --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" \
    --query '[].name' --output tsv)
  while IFS= read -r name; do
    if [[ $name == POWERBI_* && $kept != *" $name "* ]]; then stale+=("$name"); fi
  done <<<"$current"
  if $DRY_RUN; then
    show_command az functionapp config appsettings delete --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" \
      --setting-names '<each POWERBI_* setting in Azure that this run does not set>' --output none
    say "stale settings: a real run removes the POWERBI_* settings in Azure that this run does not set, and names them"
  elif ((${#stale[@]})); then
    az_do functionapp config appsettings delete --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" \
      --setting-names "${stale[@]}" --output none
    say "removed ${stale[*]}: in Azure from an earlier run, not set by this one"
  else
    say "stale settings: none (every POWERBI_* setting in Azure is one this run set)"
  fi
}

configure_cors() {
  local origin current missing=()
  current=$(az_get '' functionapp cors show --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" \
    --query allowedOrigins --output tsv)
  for origin in "${ORIGINS[@]}"; do
    grep -qxF -- "$origin" <<<"$current" || missing+=("$origin")
  done
  if ((${#missing[@]})); then
    az_do functionapp cors add --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" \
      --allowed-origins "${missing[@]}" --output none
  fi
  say "CORS: ${ORIGINS[*]} (${#missing[@]} added)"
  if rls_from_principal; then
    # A site on another origin sends App Service Authentication's cookie only with credentials
    # (fetch credentials: 'include'), and the browser reads the answer only if CORS allows them.
    az_do functionapp cors credentials --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" --enable true \
      --output none
    say "CORS credentials: on (POWERBI_RLS_USERNAME_SOURCE=principal: the sign-in cookie comes from another origin)"
  fi
}

deploy_code() {
  az_do functionapp deployment source config-zip --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" \
    --src "$WORK/package.zip" --build-remote true --output none
  say "code: deployed with a remote build (alternative: func azure functionapp publish $APP_NAME)"
}

summary() {
  local host url key_command curl_key
  host=$(az_get "$APP_NAME.azurewebsites.net" functionapp show --name "$APP_NAME" \
    --resource-group "$RESOURCE_GROUP" --query defaultHostName --output tsv)
  url="https://$host/api"
  key_command="az functionapp keys list --name $APP_NAME --resource-group $RESOURCE_GROUP --query functionKeys.default --output tsv"
  curl_key="-H \"x-functions-key: \$($key_command)\" "
  [[ ${POWERBI_HTTP_AUTH_LEVEL:-function} != anonymous ]] || curl_key="" # no key needed, none sent
  cat <<EOF

Deployed. Function URL: $url
  health:  $url/health
  reports: $url/embed/reports/<reportId>
The function app's managed identity (object id): $APP_IDENTITY
The function key (give it only to the sites that embed):
  $key_command
Try it:
  curl $curl_key"$url/embed/reports/<reportId>"
To publish code with Core Tools instead (it also honours .funcignore):
  func azure functionapp publish $APP_NAME
EOF
}

# The doctor signs in and asks Power BI what the function will ask, with the values just
# deployed. It runs outside the repository, so no local.settings.json is read instead, and
# gets the values through its environment, never its command line.
run_doctor() {
  say "doctor: checking the deployed settings (python -m shared.doctor)"
  if $DRY_RUN; then
    show_command python3 -m shared.doctor
    return
  fi
  (
    cd "$WORK"
    for name in $(compgen -v POWERBI_); do export "${name?}"; done
    export PYTHONPATH=$ROOT
    exec "${PYTHON:-python3}" -m shared.doctor
  ) || die "the doctor found a problem: see its checklist above (the deployment itself is done)"
}

# --- --redis: the shared cache --------------------------------------------------------------
# Azure Managed Redis (az redisenterprise), reached over TLS on port 10000 with Entra ID only
# (access keys off): the function signs in with its managed identity, so the URL holds no
# password. The encryption key is made once and kept in Key Vault; a later run reuses it.
create_redis() {
  local name=${REDIS_NAME:-${APP_NAME,,}-redis} host assigned assignment file
  # The identity the function signs in to Redis with: POWERBI_MANAGED_IDENTITY_CLIENT_ID's when set
  # (--federated sets it), else the system-assigned one.
  local principal=${FEDERATED_PRINCIPAL:-$APP_IDENTITY}
  [[ $name =~ ^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$ && ${#name} -le 60 ]] ||
    die "REDIS_NAME '$name' must be 1-60 letters, digits and single hyphens"
  ensure "managed redis $name" redisenterprise show --name "$name" --resource-group "$RESOURCE_GROUP" -- \
    redisenterprise create --name "$name" --resource-group "$RESOURCE_GROUP" --location "$LOCATION" \
    --sku "${REDIS_SKU:-Balanced_B0}" --public-network-access Enabled --minimum-tls-version 1.2 \
    --client-protocol Encrypted --port 10000 --clustering-policy EnterpriseCluster \
    --eviction-policy VolatileLRU --access-keys-auth Disabled
  assigned=$(az_get '' redisenterprise database access-policy-assignment list --cluster-name "$name" \
    --resource-group "$RESOURCE_GROUP" --database-name default --query '[].user.objectId' --output tsv)
  if grep -qixF -- "$principal" <<<"$assigned"; then
    say "function app's access to $name: yes"
  else
    assignment="app${principal//-/}" # the CLI takes letters and digits only here
    with_retries az_do redisenterprise database access-policy-assignment create --cluster-name "$name" \
      --resource-group "$RESOURCE_GROUP" --database-name default --access-policy-assignment-name "${assignment:0:60}" \
      --access-policy-name default --object-id "$principal" --output none ||
      die "could not give the function app access to $name"
    say "function app's access to $name: granted (access policy 'default')"
  fi
  host=$(az_get "$name.$LOCATION.redis.azure.net" redisenterprise show --name "$name" \
    --resource-group "$RESOURCE_GROUP" --query hostName --output tsv)
  file="$WORK/powerbi-cache-url"
  $DRY_RUN || printf 'rediss://%s:10000' "$host" >"$file"
  store_file_secret POWERBI_CACHE_URL "$file"
  if exists keyvault secret show --vault-name "$KEY_VAULT_NAME" --name "$(secret_name POWERBI_CACHE_ENCRYPTION_KEY)"; then
    say "secret POWERBI_CACHE_ENCRYPTION_KEY: exists in $KEY_VAULT_NAME, reused"
    add_reference POWERBI_CACHE_ENCRYPTION_KEY
  else
    file="$WORK/powerbi-cache-encryption-key"
    # 32 random bytes, base64, straight into a 0600 file: the key is on no command line.
    $DRY_RUN || head -c 32 /dev/urandom | base64 | tr -d '\n' >"$file"
    store_file_secret POWERBI_CACHE_ENCRYPTION_KEY "$file"
  fi
}

# `store_file_secret SETTING FILE`: the file's content into Key Vault, the file deleted, a reference kept.
store_file_secret() {
  local name=$1 file=$2
  with_retries az_do keyvault secret set --vault-name "$KEY_VAULT_NAME" --name "$(secret_name "$name")" \
    --file "$file" --encoding utf-8 --output none || die "could not store $name in key vault $KEY_VAULT_NAME"
  rm -f "$file"
  add_reference "$name"
  say "secret $name: stored in $KEY_VAULT_NAME"
}

add_reference() {
  SECRET_REFERENCES+=("$1=@Microsoft.KeyVault(SecretUri=https://$KEY_VAULT_NAME.vault.azure.net/secrets/$(secret_name "$1")/)")
}

# --- --customers: the customer directory in a table of the app's storage account ---------------
# The app reads it with its own identity (Storage Table Data Reader on that table only); the
# connection is identity-based (<name>__tableServiceUri), so no account key is in any setting.
readonly CUSTOMERS_CONNECTION=CustomersStorage
readonly CUSTOMERS_GLOBAL_SCOPE=(POWERBI_WORKSPACE_ID POWERBI_ALLOWED_WORKSPACES POWERBI_ALLOWED_REPORTS
  POWERBI_ALLOWED_DASHBOARDS POWERBI_PROFILE_ID)

check_customers_inputs() {
  local name set=()
  POWERBI_CUSTOMERS_TABLE=${POWERBI_CUSTOMERS_TABLE:-customers}
  [[ $POWERBI_CUSTOMERS_TABLE =~ ^[A-Za-z][A-Za-z0-9]{2,62}$ ]] ||
    die "POWERBI_CUSTOMERS_TABLE must be a table name: a letter, then 2 to 62 letters or digits"
  [[ ${POWERBI_CUSTOMER_FROM:-} =~ ^(claim|role):.+ ]] ||
    die "--customers needs POWERBI_CUSTOMER_FROM: claim:<claim type> or role:<prefix> (see --help)"
  for name in "${CUSTOMERS_GLOBAL_SCOPE[@]}"; do
    [[ -z ${!name:-} ]] || set+=("$name")
  done
  ((${#set[@]} == 0)) || die "with --customers each customer brings its own workspaces and profile: unset ${set[*]}"
  # shellcheck disable=SC2034 # configure_app sends every POWERBI_* variable set here
  POWERBI_CUSTOMERS_SOURCE=table POWERBI_CUSTOMERS_CONNECTION=$CUSTOMERS_CONNECTION
}

create_customers_table() {
  local table=$POWERBI_CUSTOMERS_TABLE account_id table_id endpoint
  account_id=$(az_get '<storage-account-id>' storage account show --name "$STORAGE_ACCOUNT" \
    --resource-group "$RESOURCE_GROUP" --query id --output tsv)
  table_id="$account_id/tableServices/default/tables/$table"
  # Created through Azure Resource Manager: needs no data-plane role, unlike `az storage table create`.
  ensure "table $table in $STORAGE_ACCOUNT" resource show --ids "$table_id" -- \
    resource create --id "$table_id" --api-version 2023-05-01 --properties '{}'
  grant_on "$table_id" "Storage Table Data Reader" "$APP_IDENTITY" ServicePrincipal "the function app"
  grant_on "$table_id" "Storage Table Data Contributor" "$DEPLOYER_ID" "$DEPLOYER_TYPE" "the deployer (you)"
  endpoint=$(az_get "https://$STORAGE_ACCOUNT.table.core.windows.net/" storage account show --name "$STORAGE_ACCOUNT" \
    --resource-group "$RESOURCE_GROUP" --query primaryEndpoints.table --output tsv)
  # configure_app sends it with the POWERBI_CUSTOMERS_* settings; the global scope, which this run
  # refuses to set, it removes from Azure as stale (remove_stale_settings).
  CUSTOMERS_SETTINGS=("${CUSTOMERS_CONNECTION}__tableServiceUri=${endpoint%/}")
  say "customers: table $table, read with the app's identity (${CUSTOMERS_CONNECTION}__tableServiceUri); onboard with python -m shared.customers add"
}

# `grant_on SCOPE ROLE OBJECT-ID PRINCIPAL-TYPE WHO`, unless already granted there or above.
grant_on() {
  local scope=$1 role=$2 principal=$3 kind=$4 who=$5 found
  found=$(az_get '' role assignment list --assignee "$principal" --role "$role" --scope "$scope" \
    --include-inherited --query '[].id' --output tsv)
  if [[ -n $found ]]; then
    say "$who has '$role' on the table: yes"
    return
  fi
  with_retries az_do role assignment create --assignee-object-id "$principal" --assignee-principal-type "$kind" \
    --role "$role" --scope "$scope" --output none || die "could not grant '$role' to $who"
  say "$who has '$role' on the table: granted"
}

# --- --federated: no secret to rotate ---------------------------------------------------------
# The app registration trusts a user-assigned identity of its own tenant (Microsoft: "Configure an
# application to trust a managed identity"): the function gets that identity's token for the
# token-exchange audience and signs in with it as the client assertion.

# Entra ID's host and the token-exchange audience of POWERBI_CLOUD (shared/settings.py's clouds).
federated_cloud() {
  case ${POWERBI_CLOUD:-Public} in
  Public | USGov) ;; # USGov (GCC) signs in with commercial Entra ID
  USGovHigh | USGovDoD) FEDERATED_HOST=login.microsoftonline.us FEDERATED_AUDIENCE=api://AzureADTokenExchangeUSGov ;;
  China) FEDERATED_HOST=login.chinacloudapi.cn FEDERATED_AUDIENCE=api://AzureADTokenExchangeChina ;;
  *) die "POWERBI_CLOUD must be Public, USGov, USGovHigh, USGovDoD or China" ;;
  esac
}

create_federated_identity() {
  local name=${IDENTITY_NAME:-${APP_NAME}-signin} identity_id client_id subject assigned tenant issuer trusted
  [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_-]{2,127}$ ]] ||
    die "IDENTITY_NAME '$name' must be 3-128 letters, digits, hyphens and underscores"
  ensure "user-assigned identity $name" identity show --name "$name" --resource-group "$RESOURCE_GROUP" -- \
    identity create --name "$name" --resource-group "$RESOURCE_GROUP" --location "$LOCATION"
  identity_id=$(az_get '<identity-resource-id>' identity show --name "$name" --resource-group "$RESOURCE_GROUP" \
    --query id --output tsv)
  client_id=$(az_get '<identity-client-id>' identity show --name "$name" --resource-group "$RESOURCE_GROUP" \
    --query clientId --output tsv)
  subject=$(az_get '<identity-principal-id>' identity show --name "$name" --resource-group "$RESOURCE_GROUP" \
    --query principalId --output tsv)

  assigned=$(az_get '' functionapp identity show --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" \
    --query userAssignedIdentities --output json)
  if grep -qiF -- "\"$identity_id\"" <<<"$assigned"; then
    say "identity $name on the function app: yes"
  else
    az_do functionapp identity assign --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" \
      --identities "$identity_id" --output none
    say "identity $name on the function app: assigned"
  fi

  tenant=$(az_get '<tenant-id>' account show --query tenantId --output tsv)
  issuer="https://$FEDERATED_HOST/$tenant/v2.0"
  trusted=$(az_get '' ad app federated-credential list --id "$POWERBI_CLIENT_ID" --query '[].subject' --output tsv)
  if grep -qixF -- "$subject" <<<"$trusted"; then
    say "app registration $POWERBI_CLIENT_ID trusts identity $name: yes"
  else
    with_retries az_do ad app federated-credential create --id "$POWERBI_CLIENT_ID" --parameters \
      "{\"name\": \"${APP_NAME}-${subject}\", \"issuer\": \"$issuer\", \"subject\": \"$subject\", \"audiences\": [\"$FEDERATED_AUDIENCE\"], \"description\": \"Power BI embed function $APP_NAME signs in with identity $name\"}" \
      --output none || die "could not add the federated identity credential to app registration $POWERBI_CLIENT_ID (are you its owner?)"
    say "app registration $POWERBI_CLIENT_ID trusts identity $name: added (issuer $issuer, subject $subject, audience $FEDERATED_AUDIENCE)"
  fi
  FEDERATED_SETTINGS=(POWERBI_CLIENT_ASSERTION=managed_identity "POWERBI_MANAGED_IDENTITY_CLIENT_ID=$client_id")
  FEDERATED_PRINCIPAL=$subject
}

main() {
  parse_args "$@"
  check_inputs
  if $CUSTOMERS; then check_customers_inputs; fi
  derive_names
  parse_origins
  read_setting_names
  load_certificate_file
  collect_secrets
  umask 077 # the package and every secret file are for this user only
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  build_package
  $DRY_RUN && say "dry run: printing the az commands, running none"
  deployer_identity
  create_app
  if $FEDERATED; then create_federated_identity; fi
  SECRET_REFERENCES=()
  if ((${#SECRETS[@]})) || $REDIS; then
    create_vault
  else
    say "no secret in $AUTH_MODE mode: no key vault needed"
  fi
  if $REDIS; then create_redis; fi
  if $CUSTOMERS; then create_customers_table; fi
  configure_app
  if $TELEMETRY; then create_telemetry; fi
  configure_cors
  deploy_code
  summary
  if $DOCTOR; then run_doctor; fi
}

# --telemetry: Application Insights on a Log Analytics workspace (each looked up before it is made), its
# connection string and the host's OpenTelemetry mode as app settings, and the workbook on it. The
# function configures the Azure Monitor distro itself (PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=false):
# its own spans replace the distro's HTTP instrumentation, whose URLs could carry a user name.
create_telemetry() {
  local workspace=${LOG_WORKSPACE_NAME:-${APP_NAME,,}-logs} insights=${APP_INSIGHTS_NAME:-${APP_NAME,,}-insights}
  local workspace_id insights_id connection template
  [[ $workspace =~ ^[A-Za-z0-9][A-Za-z0-9-]{2,61}[A-Za-z0-9]$ ]] ||
    die "LOG_WORKSPACE_NAME '$workspace' must be 4-63 letters, digits and hyphens"
  [[ $insights =~ ^[A-Za-z0-9._()-]{1,255}$ && $insights != *. ]] ||
    die "APP_INSIGHTS_NAME '$insights' must be 1-255 letters, digits, periods, underscores, hyphens, parentheses"
  ensure "log analytics workspace $workspace" monitor log-analytics workspace show --workspace-name "$workspace" \
    --resource-group "$RESOURCE_GROUP" -- \
    monitor log-analytics workspace create --workspace-name "$workspace" --resource-group "$RESOURCE_GROUP" \
    --location "$LOCATION"
  workspace_id=$(az_get '<workspace-id>' monitor log-analytics workspace show --workspace-name "$workspace" \
    --resource-group "$RESOURCE_GROUP" --query id --output tsv)
  ensure "application insights $insights" monitor app-insights component show --app "$insights" \
    --resource-group "$RESOURCE_GROUP" -- \
    monitor app-insights component create --app "$insights" --resource-group "$RESOURCE_GROUP" \
    --location "$LOCATION" --kind web --application-type web --workspace "$workspace_id"
  insights_id=$(az_get '<insights-id>' monitor app-insights component show --app "$insights" \
    --resource-group "$RESOURCE_GROUP" --query id --output tsv)
  connection=$(az_get '<connection-string>' monitor app-insights component show --app "$insights" \
    --resource-group "$RESOURCE_GROUP" --query connectionString --output tsv)
  az_do functionapp config appsettings set --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" --settings \
    "APPLICATIONINSIGHTS_CONNECTION_STRING=$connection" PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=false \
    AzureFunctionsJobHost__telemetryMode=OpenTelemetry --output none
  say "telemetry: to $insights (connection string and the host's OpenTelemetry mode set)"
  template="$WORK/workbook-template.json"
  "${PYTHON:-python3}" "$ROOT/deploy/workbook.py" --source "$insights_id" --location "$LOCATION" \
    --title "Power BI embed tokens ($APP_NAME)" "$template"
  az_do deployment group create --resource-group "$RESOURCE_GROUP" --name powerbi-embed-workbook \
    --template-file "$template" --output none
  say "workbook: deployed on $insights (Workbooks in its portal menu)"
}

main "$@"
