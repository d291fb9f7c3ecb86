// Starts the pinned unleash-server for guardrail's real-server tests (tests/servers/unleash.py runs it).
// Everything comes from the environment the fixture sets: GUARDRAIL_UNLEASH_PORT (127.0.0.1 only), the
// DATABASE_* variables, INIT_ADMIN_API_TOKENS (the bootstrap admin token), and the switches below.
// It never reaches out: the version check is off, and telemetry is off twice because unleash-server's
// create-config reads `options.telemetry || SEND_TELEMETRY` (a `false` option falls through to the
// variable, whose default is true).
import { start } from 'unleash-server';

const port = Number(process.env.GUARDRAIL_UNLEASH_PORT);
if (!Number.isInteger(port) || port <= 0) {
  console.error('GUARDRAIL_UNLEASH_PORT must be a port number');
  process.exit(2);
}

const unleash = await start({
  server: {
    host: '127.0.0.1',
    port,
    unleashUrl: `http://127.0.0.1:${port}`,
    gracefulShutdownEnable: true,
    gracefulShutdownTimeout: 1000,
  },
  versionCheck: { enable: false },
  telemetry: false,
  logLevel: process.env.LOG_LEVEL || 'warn',
});

// The fixture stops the server by PID with SIGTERM: close the HTTP server and the database pool.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, async () => {
    try {
      await unleash.stop();
    } finally {
      process.exit(0);
    }
  });
}
