"""What more than one service uses: frames, config, logging, ZeroMQ and metrics helpers."""
