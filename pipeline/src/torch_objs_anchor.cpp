// Keeps the torch object library non-empty while its sources are being written.
