-- tower-dashscope TokenBudget, script version 1 (keys <prefix>:v1:{<budget>}:rq and :tk).
--
-- The in-process algorithm of src/budget/window.rs, step for step, over two Redis hashes: a
-- sliding window of 100 slots (101 kept) per dimension, carried debt, all or nothing over the
-- request and token windows. The clock is the server's TIME, never the client's. Every number
-- is an integer below 2^53 (microseconds, thousandths), written with string.format('%d'), so a
-- double never rounds one. Replicated by effects: redis.replicate_commands() for Redis 3.2 to
-- 4.x; Redis 5 and later (and Valkey) always replicate scripts by effects.
--
-- KEYS[1] the request window, KEYS[2] the token window (one hash tag: one cluster slot).
-- ARGV[1] op: 'take' | 'credit' | 'debit' | 'peek'
-- ARGV[2] slot width, microseconds (>= 1)
-- ARGV[3] requests per window, thousandths (0: unlimited, no key kept)
-- ARGV[4] tokens per window, thousandths (0: unlimited, no key kept)
-- ARGV[5] take: the tokens to take; credit/debit: the amount
-- ARGV[6] credit: the slot the tokens were taken in
--
-- Reply: {status, value, tokens used, microseconds until idle}
--   status 1: taken, value = the slot of the take;  0: not now, value = wait in microseconds
--   status 2: settled or peeked, value = 0
if redis.replicate_commands then
  redis.replicate_commands()
end

local RING, SLOTS, MAX = 101, 100, 9007199254740991
local ONE_REQUEST = 1000

local function idiv(a, b)
  local q = math.floor(a / b)
  while q * b > a do q = q - 1 end
  while (q + 1) * b <= a do q = q + 1 end
  return q
end
local function imod(a, b) return a - idiv(a, b) * b end
local function add(a, b)
  local s = a + b
  if s > MAX then return MAX end
  return s
end
local function fmt(n) return string.format('%d', n) end
local function arg(i)
  local n = tonumber(ARGV[i] or '0') or 0
  if n < 0 then n = 0 end
  if n > MAX then n = MAX end
  return math.floor(n)
end

local op = ARGV[1]
local width = arg(2)
if width < 1 then width = 1 end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local current = idiv(now, width)

local function load(key)
  local w = { key = key, slots = {}, sum = 0, carry = 0, dirty = {}, fresh = true }
  local raw = redis.call('HGETALL', key)
  local head, stored_width
  for i = 1, #raw, 2 do
    local f, v = raw[i], tonumber(raw[i + 1]) or 0
    if f == 'h' then head = v
    elseif f == 'c' then w.carry = v
    elseif f == 'w' then stored_width = v
    else
      local idx = tonumber(f)
      if idx and idx >= 0 and idx < RING then
        w.slots[idx] = v
        w.sum = add(w.sum, v)
      end
    end
  end
  if head == nil then
    w.head = current
    w.carry, w.sum, w.slots = 0, 0, {}
    return w
  end
  w.fresh = false
  w.head = head
  if stored_width ~= width then
    -- Another window length: everything counted is carried into a window of the new length.
    w.carry = add(w.sum, w.carry)
    for idx = 0, RING - 1 do
      if w.slots[idx] then w.dirty[idx] = true end
    end
    w.slots, w.sum, w.head = {}, 0, current
  end
  return w
end

local function slot(w, idx) return w.slots[idx] or 0 end

local function put(w, amount)
  if amount > 0 then
    local idx = imod(w.head, RING)
    w.slots[idx] = add(slot(w, idx), amount)
    w.sum = add(w.sum, amount)
    w.dirty[idx] = true
  end
end

local function move_carry(w, limit)
  if w.carry > 0 then
    local room = limit - w.sum
    if room < 0 then room = 0 end
    local moved = math.min(room, w.carry)
    put(w, moved)
    w.carry = w.carry - moved
  end
end

local function advance(w, limit)
  local steps = current - w.head
  if steps < 0 then steps = 0 end
  local stepped = 0
  while steps > 0 do
    local skipped = false
    if w.carry == 0 and (w.sum == 0 or steps >= RING) then
      if steps >= RING then
        for idx = 0, RING - 1 do
          if w.slots[idx] then w.dirty[idx] = true end
        end
        w.slots, w.sum, w.head = {}, 0, current
        break
      end
      if w.sum == 0 then
        w.head = current
        break
      end
    end
    if w.carry > 0 and stepped >= 2 * RING and w.sum > 0 then
      local windows = math.min(idiv(steps, RING), idiv(w.carry, w.sum))
      if windows > 0 then
        w.carry = w.carry - windows * w.sum
        w.head = w.head + windows * RING
        steps = steps - windows * RING
        skipped = true
      end
    end
    if not skipped then
      w.head = w.head + 1
      local idx = imod(w.head, RING)
      w.sum = w.sum - slot(w, idx)
      if w.slots[idx] then
        w.slots[idx] = nil
        w.dirty[idx] = true
      end
      move_carry(w, limit)
      steps = steps - 1
      stepped = stepped + 1
    end
  end
  move_carry(w, limit)
end

local function fits(w, cost, limit)
  if w.carry > 0 then return false end
  return add(w.sum, cost) <= limit or (w.sum == 0 and cost > limit)
end

local function charge(w, cost, limit)
  local room = limit - w.sum
  if room < 0 then room = 0 end
  local now_part = math.min(cost, room)
  put(w, now_part)
  w.carry = add(w.carry, cost - now_part)
  return w.head
end

local function credit(w, at, amount)
  local from_carry = math.min(amount, w.carry)
  w.carry = w.carry - from_carry
  local rest = amount - from_carry
  if rest == 0 or at + RING <= w.head or at > w.head then return end
  local idx = imod(at, RING)
  local taken = math.min(rest, slot(w, idx))
  if taken > 0 then
    w.slots[idx] = slot(w, idx) - taken
    w.sum = w.sum - taken
    w.dirty[idx] = true
  end
end

local function until_leaves(s)
  local at = (s + RING) * width
  if at > MAX then return MAX end
  if at <= now then return 0 end
  return at - now
end

local function wait_for(w, cost, limit)
  if fits(w, cost, limit) then return 0 end
  local keep = limit - cost
  if keep < 0 then keep = 0 end
  local excess = add(w.sum, w.carry) - keep
  if excess < 0 then excess = 0 end
  if cost > limit then excess = add(w.sum, w.carry) end
  local freed = 0
  for age = RING - 1, 0, -1 do
    local s = w.head - age
    if s >= 0 then
      freed = add(freed, slot(w, imod(s, RING)))
      if freed >= excess then return until_leaves(s) end
    end
  end
  local owed = excess - freed
  local lim = limit
  if lim < 1 then lim = 1 end
  local windows = idiv(owed + lim - 1, lim)
  local wait = until_leaves(w.head) + windows * width * SLOTS
  if wait > MAX then return MAX end
  return wait
end

-- How long until the window counts nothing, if nothing more is charged.
local function idle_in(w, limit)
  if w.sum == 0 and w.carry == 0 then return 0 end
  local lim = limit
  if lim < 1 then lim = 1 end
  local wait = until_leaves(w.head) + idiv(w.carry + lim - 1, lim) * width * SLOTS
  if wait > MAX then return MAX end
  return wait
end

local function save(w, limit)
  if w.sum == 0 and w.carry == 0 then
    if not w.fresh then redis.call('DEL', w.key) end
    return
  end
  local set = { 'h', fmt(w.head), 'c', fmt(w.carry), 'w', fmt(width) }
  local del = {}
  for idx, _ in pairs(w.dirty) do
    local v = slot(w, idx)
    if v > 0 then
      set[#set + 1] = fmt(idx)
      set[#set + 1] = fmt(v)
    else
      del[#del + 1] = fmt(idx)
    end
  end
  if #del > 0 and not w.fresh then redis.call('HDEL', w.key, unpack(del)) end
  redis.call('HSET', w.key, unpack(set))
  -- Idle keys expire: a second after the window would count nothing.
  redis.call('PEXPIRE', w.key, idiv(idle_in(w, limit) + 999, 1000) + 1000)
end

local req_limit, tok_limit = arg(3), arg(4)
local amount = arg(5)
local req, tok
if req_limit > 0 then
  req = load(KEYS[1])
  advance(req, req_limit)
end
if tok_limit > 0 then
  tok = load(KEYS[2])
  advance(tok, tok_limit)
end

local function used()
  if tok then return add(tok.sum, tok.carry) end
  return 0
end
local function idle()
  local r, t = 0, 0
  if req then r = idle_in(req, req_limit) end
  if tok then t = idle_in(tok, tok_limit) end
  return math.max(r, t)
end

if op == 'take' then
  local wait = 0
  if req then wait = wait_for(req, ONE_REQUEST, req_limit) end
  if tok then wait = math.max(wait, wait_for(tok, amount, tok_limit)) end
  if wait > 0 then
    -- Nothing charged: nothing written (advancing again later gives the same windows).
    return { 0, wait, used(), idle() }
  end
  local at = current
  if req then
    charge(req, ONE_REQUEST, req_limit)
    save(req, req_limit)
  end
  if tok then
    at = charge(tok, amount, tok_limit)
    save(tok, tok_limit)
  end
  return { 1, at, used(), idle() }
elseif op == 'credit' then
  if tok and not tok.fresh then
    credit(tok, arg(6), amount)
    save(tok, tok_limit)
  end
  return { 2, 0, used(), idle() }
elseif op == 'debit' then
  if tok then
    charge(tok, amount, tok_limit)
    save(tok, tok_limit)
  end
  return { 2, 0, used(), idle() }
elseif op == 'peek' then
  return { 2, 0, used(), idle() }
end
return redis.error_reply('tower-dashscope budget v1: unknown operation ' .. tostring(op))
