#!/usr/bin/env bash
# Run the development Mosquitto (deploy/mosquitto.conf) unless a broker is configured
# elsewhere or already listens locally; then idle so supervisord keeps one quiet process.
set -u
host=${MQTT_BROKER:-localhost}
port=${MQTT_PORT:-1883}
idle() { echo "broker: $1"; exec sleep infinity; }

case "$host" in localhost|127.0.0.1|::1) ;; *) idle "using the configured broker $host:$port";; esac
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  idle "a broker already listens on 127.0.0.1:$port, using it"
fi
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$mosquitto_bin" ] || { echo "broker: mosquitto is not installed: sudo apt-get install mosquitto" >&2; exit 1; }
mkdir -p .run/mosquitto
conf=.run/mosquitto.conf
sed "s/^listener 1883 /listener $port /" deploy/mosquitto.conf > "$conf"
echo "broker: starting local Mosquitto on 127.0.0.1:$port"
exec "$mosquitto_bin" -c "$conf"
