"""What every layer uses: times, bar sizes and instrument names, structured logs."""
