-- wrk script for scripts/soak.py: the high-rate part of the soak's mixed traffic.
--
-- Run with one connection per thread (wrk -tN -cN) so that request() and response() alternate
-- and each response's latency (and route) is known. Configured by environment variables:
--   SOAK_INTERVAL_US  microseconds between request starts on each connection (0: closed loop)
--   SOAK_EPOCH        Unix time (s) that windows are counted from
--   SOAK_WINDOW_S     width of a statistics window in seconds (60)
--   SOAK_ACCOUNTS     bank accounts a0..a{N-1} to transfer between
--   SOAK_CODES        shortener codes to look up, comma-separated
--   SOAK_TOKEN        a token that may invoke `private`
--   SOAK_MIX          route weights, e.g. "hello=66,private=5,counter=8,transfer=8,..."
--   SOAK_OUT          file that done() writes the statistics to
-- Output lines: "S window route status count", "H window route bucket count" (latency bucket
-- b holds latencies around exp((b + 0.5) / 20) microseconds), "E connect read write status
-- timeout", "T requests duration_us", "L late", where late counts requests sent more than 1 s
-- behind the schedule (the server could not keep up with the asked rate).
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } soak_timespec;
  int clock_gettime(int clock, soak_timespec *tp);
]]
local ts = ffi.new("soak_timespec")
local function now_us()
  ffi.C.clock_gettime(0, ts) -- CLOCK_REALTIME: windows line up with the Python side's time.time()
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local interval = tonumber(os.getenv("SOAK_INTERVAL_US") or "0")
local epoch = tonumber(os.getenv("SOAK_EPOCH") or "0") * 1e6
local window = tonumber(os.getenv("SOAK_WINDOW_S") or "60") * 1e6
local accounts = tonumber(os.getenv("SOAK_ACCOUNTS") or "10")
local token = os.getenv("SOAK_TOKEN") or ""
local codes = {}
for code in string.gmatch(os.getenv("SOAK_CODES") or "", "[^,]+") do
  codes[#codes + 1] = code
end

local mix = {}
local total_weight = 0
for name, weight in string.gmatch(os.getenv("SOAK_MIX") or "hello=1", "([%w-]+)=([%d.]+)") do
  total_weight = total_weight + tonumber(weight)
  mix[#mix + 1] = { name = name, upto = total_weight }
end

local builders = {
  hello = function() return wrk.format("GET", "/fn/hello/world") end,
  private = function() return wrk.format("GET", "/fn/private/p", { ["Authorization"] = "Bearer " .. token }) end,
  counter = function() return wrk.format("POST", "/fn/counter/") end,
  transfer = function()
    local from = math.random(0, accounts - 1)
    local to = (from + math.random(1, accounts - 1)) % accounts
    return wrk.format("POST", string.format("/fn/bank/transfer?from=a%d&to=a%d&amount=%d", from, to, math.random(1, 100)))
  end,
  ["bank-total"] = function() return wrk.format("GET", "/fn/bank/total") end,
  ["short-get"] = function() return wrk.format("GET", "/fn/shortener/" .. codes[math.random(1, #codes)]) end,
  ["short-post"] = function()
    return wrk.format("POST", "/fn/shortener/", { ["Content-Type"] = "text/plain" },
      string.format("https://example.com/soak/%d/%d", id or 0, math.random(1, 1e9)))
  end,
}

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("id", #threads)
end

function init(args)
  math.randomseed(os.time() * 1000 + (id or 0))
  stats = {}
  late = 0
  next_at = now_us() + math.random() * interval
end

function request()
  local pick = math.random() * total_weight
  current = mix[#mix].name
  for _, entry in ipairs(mix) do
    if pick < entry.upto then
      current = entry.name
      break
    end
  end
  started = now_us()
  return builders[current]()
end

function response(status, headers, body)
  local finished = now_us()
  local win = math.floor((started - epoch) / window)
  local key = "S " .. win .. " " .. current .. " " .. status
  stats[key] = (stats[key] or 0) + 1
  local latency = math.max(finished - started, 1)
  local bucket = "H " .. win .. " " .. current .. " " .. math.floor(math.log(latency) * 20)
  stats[bucket] = (stats[bucket] or 0) + 1
end

function delay()
  if interval <= 0 then
    return 0
  end
  next_at = next_at + interval
  local wait = next_at - now_us()
  if wait < -1e6 then -- more than a second behind: count it and restart the schedule from now
    late = late + 1
    next_at = now_us()
    return 0
  end
  return math.max(0, math.floor(wait / 1000 + 0.5))
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("SOAK_OUT") or "soak-wrk.txt", "w"))
  for _, thread in ipairs(threads) do
    for key, count in pairs(thread:get("stats")) do
      out:write(key, " ", count, "\n")
    end
    out:write("L ", thread:get("late"), "\n")
  end
  local e = summary.errors
  out:write(string.format("E %d %d %d %d %d\n", e.connect, e.read, e.write, e.status, e.timeout))
  out:write(string.format("T %d %d\n", summary.requests, summary.duration))
  out:close()
end
