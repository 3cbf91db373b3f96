// Test fixture: panva's oidc-provider (8.x) on a loopback ephemeral port.
//
// Started by tests/test_oidc_interop.py. Configuration comes from the environment:
//   INTEROP_REDIRECT_URIS   comma-separated redirect URIs of the client (required)
//   INTEROP_CLIENT_ID       client id (default "broker-interop")
//   INTEROP_CLIENT_SECRET   client secret (client_secret_basic)
// When listening it prints one line to stdout: {"issuer": "http://127.0.0.1:<port>"}.
//
// The client: client_secret_basic, PKCE required, authorization_code + refresh_token,
// refresh-token rotation on every use, refresh tokens issued for offline_access, RFC 7009
// revocation, RFC 9207 `iss` in the authorization response (always on in 8.x), and the
// built-in development login / consent forms ("devInteractions"), which the test drives.
import http from 'node:http';
import crypto from 'node:crypto';

import Provider from 'oidc-provider';

const redirectUris = (process.env.INTEROP_REDIRECT_URIS || '').split(',').filter(Boolean);
if (redirectUris.length === 0) {
  process.stderr.write('INTEROP_REDIRECT_URIS is required\n');
  process.exit(2);
}
const clientId = process.env.INTEROP_CLIENT_ID || 'broker-interop';
const clientSecret = process.env.INTEROP_CLIENT_SECRET || crypto.randomBytes(24).toString('hex');

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;

  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        token_endpoint_auth_method: 'client_secret_basic',
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        redirect_uris: redirectUris,
      },
    ],
    pkce: { methods: ['S256'], required: () => true },
    rotateRefreshToken: () => true,
    // The library default, spelled out: refresh tokens only for offline_access.
    issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token')
      && code.scopes.has('offline_access'),
    features: {
      devInteractions: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
    },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
    },
    scopes: ['openid', 'offline_access', 'email'],
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      IdToken: 3600,
      RefreshToken: 86400,
      Interaction: 600,
      Session: 3600,
      Grant: 86400,
    },
    async findAccount(ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return { sub, email: `${sub}@example.test`, email_verified: true };
        },
      };
    },
  });
  // The dev interactions and missing JWKS produce warnings on stderr; they are expected here.
  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
