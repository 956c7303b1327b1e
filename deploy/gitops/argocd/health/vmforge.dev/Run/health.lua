-- Argo CD health of a vmforge Run. A Run happens once, so its final phase decides:
--   Healthy      Succeeded
--   Degraded     Failed or Cancelled (the message carries the reason and exit code), or Stalled=True
--   Progressing  not yet seen by the operator, Pending, Launching, Running, or being deleted
local hs = { status = "Progressing", message = "Waiting for the vmforge operator" }

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then return c end
  end
  return nil
end

local function text(c)
  if c.message ~= nil and c.message ~= "" then return c.reason .. ": " .. c.message end
  return c.reason
end

local function describe(status)
  local m = status.phase
  if status.reason ~= nil and status.reason ~= "" and status.reason ~= status.phase then m = m .. " (" .. status.reason .. ")" end
  if status.exitCode ~= nil then m = m .. ", exit code " .. status.exitCode end
  if status.message ~= nil and status.message ~= "" then m = m .. ": " .. status.message end
  return m
end

if obj.status == nil or obj.status.phase == nil then
  if obj.metadata.deletionTimestamp ~= nil then hs.message = "Deleting" end
  return hs
end

local phase = obj.status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = describe(obj.status)
  return hs
end
if phase == "Failed" or phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = describe(obj.status)
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = phase .. ": " .. text(stalled)
  return hs
end
if obj.metadata.deletionTimestamp ~= nil then
  hs.message = "Deleting: the operator is stopping the machine"
  return hs
end
hs.message = describe(obj.status)
return hs
