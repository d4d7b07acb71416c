local tx = redis.call('HGETALL', tx_key(ARGV[2]))
remove_tx(ARGV[2])
if #tx == 0 then return false end
return tx
