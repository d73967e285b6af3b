#!/usr/bin/env bash
# Runs site.yml for real, twice, as root, in a throwaway container this script makes: a
# mount namespace whose / is an overlay of the host's / with a tmpfs on top, entered with
# chroot. Nothing reaches the host's files; the host's packages and the Ansible venv are
# visible read-only through the overlay's lower layer.
#
#   sandbox.sh VENV BINARIES_DIR OUT_DIR
#
# Leaves in OUT_DIR: run1.log and run2.log (ansible-playbook), verify.log
# (systemd-analyze verify of the installed units), checks.log (the deployed state).
set -euo pipefail
venv=$(realpath "$1")
binaries=$(realpath "$2")
out=$(realpath "$3")
ansible_dir=$(realpath "$(dirname "$0")/..")
[ "$(id -u)" = 0 ] || { echo "sandbox.sh: needs root (mount namespaces and overlayfs)" >&2; exit 2; }
[ -x "$venv/bin/ansible-playbook" ] || { echo "sandbox.sh: no ansible-playbook in $venv" >&2; exit 2; }
scratch=$(mktemp -d /tmp/otedama-ansible-sandbox.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

unshare --mount --propagation private bash -euo pipefail -s "$venv" "$binaries" "$out" "$ansible_dir" "$scratch" <<'INNER'
venv=$1 binaries=$2 out=$3 ansible_dir=$4 scratch=$5
mount -t tmpfs tmpfs "$scratch"
mkdir "$scratch/upper" "$scratch/work" "$scratch/root"
root=$scratch/root
mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$root"
mount --bind /proc "$root/proc"
mount --bind /dev "$root/dev"
mount --bind /sys "$root/sys"
mount -o remount,bind,ro "$root/sys"
mount -t tmpfs tmpfs "$root/run"
mkdir -p "$root$out"
mount --bind "$out" "$root$out"

chroot "$root" /bin/bash -euo pipefail -s "$venv" "$binaries" "$out" "$ansible_dir" <<'CHROOT'
venv=$1 binaries=$2 out=$3 ansible_dir=$4
export HOME=/root ANSIBLE_CONFIG="$ansible_dir/ansible.cfg" ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0

# otedama-tune's stand-in for / : the host's current values of the keys it plans.
"$binaries/otedama-tune" facts --json | /usr/bin/python3 -c '
import json, os, sys
facts = json.load(sys.stdin)
root = "/srv/tune-root"
for key, value in facts["sysctl"].items():
    path = os.path.join(root, "proc/sys", *key.split("."))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").write(value + "\n")
os.makedirs(root + "/sys/devices/system/cpu", exist_ok=True)
open(root + "/sys/devices/system/cpu/online", "w").write(
    open("/sys/devices/system/cpu/online").read())
os.makedirs(root + "/proc", exist_ok=True)
open(root + "/proc/meminfo", "w").write(open("/proc/meminfo").read())
'

# The cluster's TLS: a CA and this host's certificate (server and client), made once so
# the second run finds the same files.
mkdir -p /srv/nats-tls
(
    cd /srv/nats-tls
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout ca.key -out ca.pem -subj /CN=otedama-sandbox-ca 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout host.key -out host.csr -subj /CN=sandbox 2>/dev/null
    printf 'subjectAltName=DNS:sandbox,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > host.ext
    openssl x509 -req -in host.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile host.ext -out host.pem 2>/dev/null
)

cd "$ansible_dir"
for run in 1 2; do
    "$venv/bin/ansible-playbook" -i tests/sandbox-inventory.yml site.yml \
        -e "otedama_binaries_src=$binaries" > "$out/run$run.log" 2>&1 \
        || { echo "ansible-playbook run $run failed; see $out/run$run.log" >&2; exit 1; }
done

units=(/etc/systemd/system/otedama-controlplane.service
       /etc/systemd/system/otedama-dataplane@.service
       /etc/systemd/system/otedama-tune.service
       /etc/systemd/system/litecoind.service
       /lib/systemd/system/nats-server.service)
# A template is verified through an instance of it.
mkdir -p /run/verify
cp /etc/systemd/system/otedama-dataplane@.service /run/verify/otedama-dataplane@0.service
systemd-analyze verify "${units[0]}" /run/verify/otedama-dataplane@0.service "${units[2]}" "${units[3]}" "${units[4]}" \
    > "$out/verify.log" 2>&1 && echo "verify: ok" >> "$out/verify.log" \
    || echo "verify: failed" >> "$out/verify.log"

{
    id otedama
    id litecoin
    stat -c '%n %U:%G %a' /etc/otedama /etc/otedama/otedama.toml /etc/otedama/admin-token /var/lib/otedama /var/backups/otedama /usr/local/bin/otedama /usr/local/bin/otedama-tune
    stat -c '%n %U:%G %a' /etc/nats-server.conf /etc/nats/tls/server.key /etc/otedama/nats/client.key
    /usr/sbin/nats-server -t -c /etc/nats-server.conf >/dev/null 2>&1 && echo "nats config: ok" || echo "nats config: rejected"
    promtool check config /etc/prometheus/prometheus.yml >/dev/null 2>&1 && echo "prometheus config: ok" || echo "prometheus config: rejected"
    grep -A3 'job_name: otedama' /etc/prometheus/prometheus.yml
    stat -c '%n %U:%G %a' /etc/prometheus/otedama.rules.yml /etc/grafana/provisioning/datasources/otedama.yml \
        /etc/grafana/provisioning/dashboards/otedama.yml /var/lib/grafana/dashboards/otedama/otedama.json
    cmp /etc/prometheus/otedama.rules.yml "$ansible_dir/../monitoring/prometheus/otedama.rules.yml" && echo "rules: as in the repository"
    grep -E '^(nats_urls|cluster_host|nats_tls_ca_file|share_retention_hours|backup_dir|backup_interval_s|backups_kept) ' /etc/otedama/otedama.toml
    grep -E '^ReadWritePaths=' /etc/systemd/system/otedama-controlplane.service
    for file in "${units[@]}" /etc/systemd/system/nats-server.service.d/60-otedama.conf /srv/tune-root/etc/systemd/system/otedama-dataplane@.service.d/60-otedama-tune.conf /srv/tune-root/etc/sysctl.d/60-otedama.conf; do
        if [ -f "$file" ]; then echo "present: $file"; else echo "missing: $file"; fi
    done
    echo "--- otedama.toml"
    cat /etc/otedama/otedama.toml
    echo "--- otedama-tune check"
    /usr/local/bin/otedama-tune check --root /srv/tune-root --connections 10000 \
        --shares-per-second 1000 --dataplane-cores 1 && echo "tune check: ok"
    echo "--- config parses"
    /usr/local/bin/otedama config --config /etc/otedama/otedama.toml >/dev/null \
        && echo "config: ok" || echo "config: rejected"
} > "$out/checks.log" 2>&1
CHROOT
INNER
