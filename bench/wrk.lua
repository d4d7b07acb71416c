-- wrk script for bench/run.sh. wrk counts 3xx (a redirect to the sign-in page) as a
-- success, so every response that is not a 200 is counted here and reported by
-- `done`; run.sh fails the row when there is any.
--
-- With a file of session ids as argument (`wrk ... -s wrk.lua URL -- FILE`), each
-- request carries the next id in the file as the `portcullis` cookie, in rotation.
--
-- With `-- FILE dpop TOKEN THREADS`, FILE holds DPoP proofs, one per line: each request
-- carries `Authorization: DPoP TOKEN` and the next proof, each proof sent once (thread
-- k of THREADS sends lines k, k + THREADS, …; the gateway refuses a replayed proof, so
-- running out shows as answers other than 200).

non200 = 0

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_number", #threads)
end

function init(args)
   local file = args[1]
   if file == nil then
      return
   end
   if args[2] == "dpop" then
      local token, step = args[3], tonumber(args[4])
      local mine, line_number, k = {}, 0, thread_number or 1
      for line in io.lines(file) do
         line_number = line_number + 1
         if line ~= "" and (line_number - k) % step == 0 then
            mine[#mine + 1] = line
         end
      end
      local next = 0
      request = function()
         next = next + 1
         return wrk.format(nil, nil, {
            ["Authorization"] = "DPoP " .. token,
            ["DPoP"] = mine[next] or "used-up",
         })
      end
      return
   end
   local prepared = {}
   for line in io.lines(file) do
      if line ~= "" then
         prepared[#prepared + 1] = wrk.format(nil, nil, { ["Cookie"] = "portcullis=" .. line })
      end
   end
   local count = #prepared
   if count == 0 then
      error("no session ids in " .. file)
   end
   -- Threads start at different places in the file.
   local next = ((thread_number or 1) - 1) * math.floor(count / 2)
   -- Defined here, so that without a file wrk keeps its faster static request.
   request = function()
      next = next + 1
      return prepared[(next % count) + 1]
   end
end

function response(status, headers, body)
   if status ~= 200 then
      non200 = non200 + 1
   end
end

function done(summary, latency, requests)
   local bad = 0
   for _, thread in ipairs(threads) do
      bad = bad + (thread:get("non200") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d non200=%d socket_errors=%d p50_us=%d p99_us=%d\n",
      summary.requests, summary.duration, bad,
      e.connect + e.read + e.write + e.timeout,
      latency:percentile(50), latency:percentile(99)))
end
