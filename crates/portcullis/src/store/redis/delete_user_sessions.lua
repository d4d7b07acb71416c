return remove_user_sessions(ARGV[2])
