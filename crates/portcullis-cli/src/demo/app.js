// The reference for how a single-page app talks to Portcullis:
//  - who is signed in: GET /auth/session (never a token);
//  - a 401 from any API call means "sign in again": go to its login_url;
//  - every write carries X-CSRF: 1 (the gateway refuses cross-site writes).
async function api(method, path) {
  const res = await fetch(path, {
    method,
    headers: { 'Accept': 'application/json', ...(method === 'GET' ? {} : { 'X-CSRF': '1' }) },
  });
  if (res.status === 401) {
    const body = await res.json().catch(() => ({}));
    location.href = body.login_url || '/auth/login?return_to=' + encodeURIComponent(location.pathname);
    throw new Error('signed out');
  }
  return res;
}

async function showSession() {
  const res = await api('GET', '/auth/session');
  document.getElementById('session').textContent = JSON.stringify(await res.json(), null, 2);
}

document.getElementById('call').addEventListener('click', async () => {
  const res = await api('POST', '/api/hello');
  document.getElementById('answer').textContent = JSON.stringify(await res.json(), null, 2);
});

document.getElementById('signout').addEventListener('click', async () => {
  await fetch('/auth/logout', { method: 'POST', headers: { 'X-CSRF': '1', 'Accept': 'application/json' } });
  location.href = '/signed-out';
});

showSession();
