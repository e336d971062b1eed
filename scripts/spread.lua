-- wrk script for scripts/bench.sh: each request goes to one of FUNCTIONS functions f0..f{N-1},
-- uniformly at random (the scale test: cost must not grow with the number deployed).
local n = tonumber(os.getenv("FUNCTIONS") or "1000")
request = function()
  return wrk.format("GET", "/fn/f" .. math.random(0, n - 1) .. "/")
end
