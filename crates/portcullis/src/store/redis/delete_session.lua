local text = remove_session(ARGV[2])
if not text then return 0 end
announce(text)
return 1
