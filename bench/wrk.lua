-- Requests and report for bench/run: wrk -s bench/wrk.lua URL -- MODE [ARGUMENTS]
--
--   plain                     GET the URL's path (the baseline's /fixed)
--   select N                  GET /select?openid=oBaseK, K random below N (the baseline's rows)
--   insert TAG                GET /insert?openid=oI<TAG>t<thread>n<counter> (the baseline's one
--                             INSERT, on MySQL)
--   registered PREFIX N       GET PREFIXis_openid_registered?openid=oSeedK, K random below N
--   token PREFIX TOKEN        POST PREFIXlogin {} with Authorization: jwt TOKEN
--   register PREFIX TAG       POST PREFIXregister with a typed phone and an openid never sent
--                             before: oB<TAG>t<thread>n<counter>
--   openid PREFIX TAG         POST PREFIXlogin with an openid never sent before, which creates
--                             its account: oL<TAG>t<thread>n<counter>
--   code PREFIX TAG           GET PREFIXget_openid_by_code?code=c<TAG>t<thread>n<counter>.bench,
--                             a code never sent before (the fake WeChat's codes are single-use),
--                             each a person of its own (the fake's openid comes from what
--                             precedes the first dot), as the codes of many users are
--
-- done() prints one machine-readable line for bench/run:
--   BENCH requests=N seconds=S p50_us=N p99_us=N non2xx=N connect=N read=N write=N timeout=N

local threads = 0

function setup(thread)
   -- Each thread learns its number as the global `thread_number`, for unique openids and codes.
   thread:set("thread_number", threads)
   threads = threads + 1
end

local mode, prefix, argument
local counter = 0
local plain_request
-- A request made anew each time is built from constant pieces by concatenation alone:
-- wrk.format builds a table of headers and formats each of them, which on 2 cores costs the
-- server a few percent of the machine. The bytes sent are those wrk.format would send.
local get_head, get_tail, post_head

function init(args)
   mode, prefix, argument = args[1], args[2], args[3]
   math.randomseed(os.time() * 100 + (thread_number or 0))
   get_head, get_tail = "GET ", " HTTP/1.1\r\nHost: " .. wrk.headers["Host"] .. "\r\n\r\n"
   if mode == "plain" then
      plain_request = wrk.format("GET")
   elseif mode == "select" then
      argument = tonumber(prefix)
   elseif mode == "registered" then
      argument = tonumber(argument)
   elseif mode == "token" then
      plain_request = wrk.format("POST", prefix .. "login",
         { ["Content-Type"] = "application/json", ["Authorization"] = "jwt " .. argument }, "{}")
   elseif mode == "insert" then
      argument = prefix
   elseif mode == "register" or mode == "openid" then
      post_head = "POST " .. prefix .. (mode == "register" and "register" or "login")
         .. " HTTP/1.1\r\nHost: " .. wrk.headers["Host"]
         .. "\r\nContent-Type: application/json\r\nContent-Length: "
   elseif mode ~= "code" then
      error("bench/wrk.lua: unknown mode " .. tostring(mode))
   end
end

function request()
   counter = counter + 1
   if plain_request then
      return plain_request
   elseif mode == "select" then
      return get_head .. "/select?openid=oBase" .. math.random(0, argument - 1) .. get_tail
   elseif mode == "insert" then
      return get_head .. "/insert?openid=oI" .. argument .. "t" .. thread_number .. "n" .. counter
         .. get_tail
   elseif mode == "registered" then
      return get_head .. prefix .. "is_openid_registered?openid=oSeed"
         .. math.random(0, argument - 1) .. get_tail
   elseif mode == "register" then
      local body = '{"openid":"oB' .. argument .. "t" .. thread_number .. "n" .. counter
         .. '","phone":"13800138000","nickname":"bench"}'
      return post_head .. #body .. "\r\n\r\n" .. body
   elseif mode == "openid" then
      local body = '{"openid":"oL' .. argument .. "t" .. thread_number .. "n" .. counter .. '"}'
      return post_head .. #body .. "\r\n\r\n" .. body
   else
      return get_head .. prefix .. "get_openid_by_code?code=c" .. argument .. "t" .. thread_number
         .. "n" .. counter .. ".bench" .. get_tail
   end
end

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      "BENCH requests=%d seconds=%.3f p50_us=%d p99_us=%d "
         .. "non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
      summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
      errors.status, errors.connect, errors.read, errors.write, errors.timeout))
end
