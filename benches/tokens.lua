-- wrk script: POST /v1/tokens to token-broker (same body shape as the peer's post.lua).
-- env: TB_KEY (API key, issue scope), SESSION_ID (a session of the bench credential).
local sid = os.getenv("SESSION_ID") or "1_MX4xMjM0NTY3OH5-VGh1LCAwMSBKYW4gMTk3MCAwMDowMDowMCBHTVR-MC43Nzc3Nzc3Nzc3Nzc3Nzc3fg"
wrk.method = "POST"
wrk.path = "/v1/tokens"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("TB_KEY") or "")
wrk.body = '{"session_id":"' .. sid .. '","user":{"id":"alice"},"role":"publisher","data":"user=alice"}'

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"rps":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"non2xx":%d,"connect_err":%d,"read_err":%d,"write_err":%d,"timeout_err":%d}\n',
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
