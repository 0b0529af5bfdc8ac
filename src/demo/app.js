// The demo page's mini-program: each button plays one step of a mini-program's login flow against
// wxauth's real API, and the log shows what was sent, what wxauth answered and what the fake
// WeChat was asked. Every value from a server is rendered with textContent, never as markup (the
// Content-Security-Policy also forbids inline script). No network beyond this server.
'use strict';

(function () {
  const state = {
    prefix: '/miniprog/wx_auth/',
    openid: null,
    token: null,
    claims: null,
    account: null,
    revoked: null,
    lastSeq: 0,
    completed: 0,
    busy: false,
  };

  // What each error name means to whoever watches the demo.
  const MEANING = {
    wechat_code_invalid: 'code 无效 (微信 40029) · invalid code',
    wechat_code_used: 'code 已被使用 (微信 40163) · code already used',
    wechat_rate_limited: '微信限流 (45011) · WeChat rate limit',
    wechat_user_blocked: '用户被微信封禁 (40226) · user blocked by WeChat',
    wechat_unavailable: '微信无响应或出错 · WeChat unavailable (timeout)',
    token_revoked: '令牌已注销 · the token was revoked at logout',
    token_expired: '令牌已过期 · the token expired',
    token_invalid: '令牌无效 · invalid token',
    not_authenticated: '未登录 · not authenticated',
    session_expired: '会话过期, 请重新 wx.login · session expired: wx.login again',
  };

  const WECHAT_NAMES = {
    '/fake/wx_login': 'wx.login (微信客户端 · WeChat client)',
    '/fake/phone_code': 'getPhoneNumber → phone code (微信客户端 · WeChat client)',
    '/fake/encrypted_phone': 'getPhoneNumber → encryptedData (微信客户端 · WeChat client)',
    '/sns/jscode2session': 'jscode2session',
    '/cgi-bin/stable_token': 'stable_token',
    '/wxa/business/getuserphonenumber': 'getuserphonenumber',
  };

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, className, text) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined && text !== null) element.textContent = String(text);
    return element;
  }

  function pretty(value) {
    return JSON.stringify(value, (key, item) => {
      // Tokens are long: shown shortened, their claims decoded below.
      if (typeof item === 'string' && item.startsWith('eyJ') && item.length > 40) {
        return item.slice(0, 24) + '…(' + item.length + ')';
      }
      return item;
    }, 2);
  }

  function decodeJwt(token) {
    try {
      const part = token.split('.')[1];
      const base64 = part.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (part.length % 4)) % 4);
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch (error) {
      return null;
    }
  }

  function expiry(exp) {
    const date = new Date(exp * 1000);
    const seconds = exp - Math.floor(Date.now() / 1000);
    const days = Math.floor(seconds / 86400);
    const hours = Math.floor((seconds % 86400) / 3600);
    const left = seconds <= 0 ? '已过期 expired' : days + ' 天 days ' + hours + ' 小时 hours';
    return date.toLocaleString() + ' (' + left + ')';
  }

  async function request(method, url, options) {
    const headers = {};
    if (options && options.token) headers.Authorization = 'jwt ' + options.token;
    const init = { method, headers, cache: 'no-store' };
    if (options && options.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(options.body);
    }
    const exchange = { method, url, headers, body: options && options.body, status: 0, json: null, text: '' };
    const started = performance.now();
    try {
      const response = await fetch(url, init);
      exchange.status = response.status;
      exchange.text = await response.text();
      try {
        exchange.json = JSON.parse(exchange.text);
      } catch (error) {
        exchange.json = null;
      }
    } catch (error) {
      exchange.text = String(error);
    }
    exchange.ms = Math.round(performance.now() - started);
    return exchange;
  }

  function results(exchange) {
    const body = exchange.json;
    if (exchange.status !== 200 || !body || body.code !== 0 || !Array.isArray(body.results)) return null;
    return body.results[0] || null;
  }

  // One step in the log: a title, then its exchanges, then what the fake WeChat was asked.
  function Step(action, title) {
    this.entry = el('li', 'entry');
    this.entry.dataset.action = action;
    const head = el('div', 'entry-head');
    head.append(el('span', 'step-number', '#' + (state.completed + 1)), el('span', 'step-title', title));
    this.entry.append(head);
    $('log').append(this.entry);
    this.entry.scrollIntoView({ block: 'nearest' });
  }

  Step.prototype.note = function (text, kind) {
    this.entry.append(el('p', 'note' + (kind ? ' ' + kind : ''), text));
  };

  Step.prototype.show = function (who, exchange) {
    const block = el('div', 'exchange');
    block.append(el('div', 'who', who));
    const lines = [exchange.method + ' ' + exchange.url];
    for (const [name, value] of Object.entries(exchange.headers)) {
      lines.push(name + ': ' + (name === 'Authorization' ? value.slice(0, 28) + '…' : value));
    }
    if (exchange.body !== undefined) lines.push('', pretty(exchange.body));
    block.append(el('pre', 'request', lines.join('\n')));

    const answer = el('div', 'answer');
    const status = el('span', 'status ' + (exchange.status === 200 ? 'ok' : 'failed'), exchange.status || '—');
    answer.append('wxauth → ', status);
    const error = exchange.json && exchange.json.error;
    if (error) {
      answer.append(' ', el('span', 'error-name', error));
      if (MEANING[error]) answer.append(' ', el('span', 'meaning', MEANING[error]));
    }
    answer.append(' ', el('span', 'ms', exchange.ms + ' ms'));
    block.append(answer);
    block.append(el('pre', 'response', exchange.json ? pretty(exchange.json) : exchange.text));

    const result = results(exchange);
    if (result && typeof result.token === 'string') {
      const claims = decodeJwt(result.token);
      if (claims) {
        const box = el('div', 'claims');
        box.append(el('div', 'claims-title', 'JWT 声明 · claims'));
        box.append(el('pre', '', pretty(claims)));
        if (typeof claims.exp === 'number') box.append(el('div', 'claims-exp', '到期 expires: ' + expiry(claims.exp)));
        block.append(box);
      }
    }
    this.entry.append(block);
  };

  // A request to wxauth's API as the mini-program sends it.
  Step.prototype.api = async function (method, endpoint, options) {
    const exchange = await request(method, state.prefix + endpoint, options);
    this.show('小程序 → wxauth · mini-program → wxauth', exchange);
    return exchange;
  };

  // What the WeChat client gives the mini-program, played by the fake through a demo helper.
  Step.prototype.client = async function (helper, parameters) {
    const query = new URLSearchParams(parameters).toString();
    const exchange = await request('GET', '/demo/api/' + helper + '?' + query);
    if (exchange.status !== 200 || !exchange.json) {
      this.show('演示助手 · demo helper', exchange);
      return null;
    }
    return exchange.json;
  };

  Step.prototype.wechatLog = async function () {
    const exchange = await request('GET', '/demo/api/wechat_log?after=' + state.lastSeq);
    const body = exchange.json;
    if (exchange.status !== 200 || !body || !Array.isArray(body.entries)) return;
    state.lastSeq = Math.max(state.lastSeq, body.last || 0);
    const box = el('div', 'wechat');
    box.append(el('div', 'who', '(假)微信收到的请求 · what the fake WeChat was asked'));
    if (body.entries.length === 0) box.append(el('p', 'note', '无 · nothing'));
    for (const entry of body.entries) {
      const item = el('div', 'wechat-call');
      item.append(el('div', 'wechat-name', WECHAT_NAMES[entry.path] || entry.path));
      const query = new URLSearchParams(entry.query || {}).toString();
      const lines = [entry.method + ' ' + entry.path + (query ? '?' + decodeURIComponent(query) : '')];
      if (entry.body !== null && entry.body !== undefined) lines.push(pretty(entry.body));
      lines.push('→ ' + (entry.status === null ? '(无应答 no answer)' : entry.status) + ' ' +
        (typeof entry.answer === 'string' ? entry.answer : pretty(entry.answer)));
      item.append(el('pre', '', lines.join('\n')));
      box.append(item);
    }
    this.entry.append(box);
  };

  async function run(action, title, body) {
    if (state.busy) return;
    state.busy = true;
    for (const button of document.querySelectorAll('button')) button.disabled = true;
    $('status').textContent = '进行中… working…';
    const step = new Step(action, title);
    try {
      await body(step);
    } catch (error) {
      step.note('页面出错 · page error: ' + error, 'bad');
    }
    await step.wechatLog();
    state.completed += 1;
    step.entry.dataset.done = 'true';
    document.body.dataset.completed = String(state.completed);
    renderAccount();
    $('status').textContent = '完成 ' + state.completed + ' 步 · ' + state.completed + ' steps done';
    for (const button of document.querySelectorAll('button')) button.disabled = false;
    state.busy = false;
    step.entry.scrollIntoView({ block: 'nearest' });
  }

  function adopt(result) {
    if (result.account) state.account = result.account;
    if (typeof result.token === 'string') {
      state.token = result.token;
      state.claims = decodeJwt(result.token);
    }
  }

  function renderAccount() {
    const account = state.account;
    const set = (id, value) => {
      $(id).textContent = value === null || value === undefined || value === '' ? '—' : String(value);
    };
    if (state.token) set('acc-state', '已登录 · logged in');
    else if (state.revoked) set('acc-state', '已退出 · logged out');
    else set('acc-state', '未登录 · not logged in');
    set('acc-id', account && account.id);
    set('acc-openid', state.openid);
    set('acc-nickname', account && account.wx_nickname);
    set('acc-phone', account && account.phone);
    set('acc-registered', account ? (account.is_register ? '是 · yes' : '否 · no') : null);
    set('acc-exp', state.token && state.claims && state.claims.exp ? expiry(state.claims.exp) : null);
  }

  // Another mini-program is another session: its own openid, its own tokens. The same demo user
  // keeps one account across them (the fake gives them one unionid).
  function chooseApp(prefix) {
    state.prefix = prefix;
    state.openid = null;
    state.token = null;
    state.claims = null;
    state.account = null;
    state.revoked = null;
    renderAccount();
  }

  function chosenUser() {
    const user = $('user').value;
    if (user !== '__new__') return user;
    const random = new Uint8Array(4);
    crypto.getRandomValues(random);
    const name = 'user-' + Array.from(random, (byte) => byte.toString(16).padStart(2, '0')).join('');
    const option = el('option', '', name);
    option.value = name;
    $('user').insertBefore(option, $('user').lastElementChild);
    $('user').value = name;
    return name;
  }

  async function wxLogin(step, user) {
    const answer = await step.client('wx_login', { user });
    if (answer && typeof answer.code === 'string') {
      step.note('wx.login → code ' + answer.code);
      return answer.code;
    }
    return null;
  }

  async function login(step) {
    const user = chosenUser();
    const code = await wxLogin(step, user);
    if (!code) return;
    const exchange = await step.api('GET', 'get_openid_by_code?code=' + encodeURIComponent(code));
    const found = results(exchange);
    if (!found) return;
    state.openid = found.openid;
    state.revoked = null;
    const body = { openid: found.openid };
    const nickname = $('nickname').value;
    if (nickname) body.wx_nickname = nickname;
    const logged = results(await step.api('POST', 'login', { body }));
    if (logged) adopt(logged);
  }

  function needLogin(step) {
    if (state.openid && state.token) return false;
    step.note('请先登录 · log in first', 'bad');
    return true;
  }

  async function register(step, how) {
    if (needLogin(step)) return;
    const phone = $('phone').value;
    const body = { openid: state.openid };
    if (how === 'typed') {
      body.phone = phone;
      if ($('nickname').value) body.nickname = $('nickname').value;
    } else if (how === 'code') {
      const made = await step.client('phone_code', { phone });
      if (!made) return;
      step.note('getPhoneNumber → phone code ' + made.code);
      body.phone_code = made.code;
    } else {
      const made = await step.client('encrypt_phone', { openid: state.openid, phone });
      if (!made) return;
      step.note('getPhoneNumber → encryptedData + iv (session_key 加密 · under the session_key)');
      body.encrypted_phone = made.encryptedData;
      body.iv = made.iv;
    }
    const registered = results(await step.api('POST', 'register', { body, token: state.token }));
    if (registered) adopt(registered);
  }

  async function me(step) {
    if (needLogin(step)) return;
    const account = results(await step.api('GET', 'me', { token: state.token }));
    if (account) state.account = account;
  }

  async function verify(step) {
    if (needLogin(step)) return;
    await step.api('GET', 'verify', { token: state.token });
  }

  async function logout(step) {
    if (needLogin(step)) return;
    const token = state.token;
    const done = results(await step.api('POST', 'logout', { token }));
    if (!done) return;
    state.revoked = token;
    state.token = null;
    state.claims = null;
    step.note('再用旧令牌请求 me · the old token again:');
    const again = await step.api('GET', 'me', { token });
    if (again.json && again.json.error === 'token_revoked') {
      step.note('已注销的令牌被拒绝 · the revoked token is refused', 'good');
    }
  }

  async function misbehave(step, kind) {
    if (kind === 'fake-hang') step.note('wxauth 最多等待 wechat.timeout_ms · wxauth waits up to wechat.timeout_ms');
    const code = await wxLogin(step, kind);
    if (!code) return;
    await step.api('GET', 'get_openid_by_code?code=' + encodeURIComponent(code));
  }

  async function repeated(step) {
    const code = await wxLogin(step, chosenUser());
    if (!code) return;
    const first = await step.api('GET', 'get_openid_by_code?code=' + encodeURIComponent(code));
    step.note('同一个 code 再发一次 (重试、双击) · the same code again (a retry, a double tap):');
    const second = await step.api('GET', 'get_openid_by_code?code=' + encodeURIComponent(code));
    if (first.text === second.text && second.status === 200) {
      step.note('同样的应答, 不是 40163 · the same answer, not 40163', 'good');
    }
  }

  function bind(id, action, title, body) {
    $(id).addEventListener('click', () => run(action, title, body));
  }

  async function start() {
    const info = await request('GET', '/demo/api/info');
    const found = results(info);
    if (found) {
      state.prefix = found.prefix;
      const select = $('user');
      select.textContent = '';
      for (const user of found.users) {
        const option = el('option', '', user);
        option.value = user;
        select.append(option);
      }
      const fresh = el('option', '', '新用户 · new user');
      fresh.value = '__new__';
      select.append(fresh);
      const apps = $('app');
      for (const app of found.apps || []) {
        const option = el('option', '', app.name + ' · ' + app.appid + ' · ' + app.prefix);
        option.value = app.prefix;
        apps.append(option);
      }
      apps.value = state.prefix;
      $('app-choice').hidden = apps.options.length < 2;
      apps.addEventListener('change', () => {
        if (state.busy) apps.value = state.prefix;
        else chooseApp(apps.value);
      });
    }
    // The log starts after whatever the fake was asked before the page opened.
    const log = await request('GET', '/demo/api/wechat_log?after=' + Number.MAX_SAFE_INTEGER);
    if (log.json && typeof log.json.last === 'number') state.lastSeq = log.json.last;

    bind('btn-login', 'login', '登录 · log in', login);
    bind('btn-register-typed', 'register-typed', '注册: 手动输入手机号 · register a typed phone', (s) => register(s, 'typed'));
    bind('btn-register-code', 'register-code', '注册: 一键 phone_code · register by one-tap phone code', (s) => register(s, 'code'));
    bind('btn-register-encrypted', 'register-encrypted', '注册: 旧版加密数据 · register by legacy encrypted data', (s) => register(s, 'encrypted'));
    bind('btn-me', 'me', 'me', me);
    bind('btn-verify', 'verify', 'verify', verify);
    bind('btn-logout', 'logout', '退出 · log out', logout);
    for (const button of document.querySelectorAll('button[data-fake]')) {
      const kind = button.dataset.fake;
      bind(button.id, kind, '微信出错 · WeChat misbehaves: ' + kind, (s) => misbehave(s, kind));
    }
    bind('btn-repeat', 'repeat', '重复的 code · a repeated code', repeated);
    $('btn-clear').addEventListener('click', () => {
      if (!state.busy) $('log').textContent = '';
    });
    renderAccount();
    $('status').textContent = '就绪 · ready';
    document.body.dataset.completed = '0';
  }

  start();
})();
